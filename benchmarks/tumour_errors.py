"""Where tumour Dice is lost: true tumour missed (called kidney, cyst or background) and false tumour (on which label).

    python benchmarks/tumour_errors.py PREDICTIONS_DIR LABELS_DIR

Volumes in ml per case, on the label maps' own grid (labels 0 background, 1 kidney, 2 tumour, 3 cyst). False
tumour on kidney is split by the true organ it lies on: a kidney region (connected foreground of the truth) that holds
true tumour, or one that holds none (a healthy kidney called tumour).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kitsseg.dataset import check_geometry  # noqa: E402
from kitsseg.errors import KitssegError  # noqa: E402
from kitsseg.evaluation import load_label_map  # noqa: E402

BACKGROUND, KIDNEY, TUMOUR, CYST = 0, 1, 2, 3
COLUMNS = ("tumour_ml", "found_ml", "missed_as_kidney_ml", "missed_as_cyst_ml", "missed_as_background_ml",
           "false_on_kidney_with_tumour_ml", "false_on_kidney_without_tumour_ml", "false_on_cyst_ml",
           "false_on_background_ml")


def tumour_error_volumes(prediction: np.ndarray, truth: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The tumour's true, found, missed and false volumes (ml), by the label on the other side of each error."""
    true_tumour, predicted_tumour = truth == TUMOUR, prediction == TUMOUR
    regions, count = ndi.label(truth > 0)
    region_has_tumour = np.zeros(count + 1, bool)
    region_has_tumour[np.unique(regions[true_tumour])] = True
    false_on_kidney = predicted_tumour & (truth == KIDNEY)
    on_tumour_region = region_has_tumour[regions[false_on_kidney]]
    voxels = {
        "tumour_ml": true_tumour.sum(),
        "found_ml": (true_tumour & predicted_tumour).sum(),
        "missed_as_kidney_ml": (true_tumour & (prediction == KIDNEY)).sum(),
        "missed_as_cyst_ml": (true_tumour & (prediction == CYST)).sum(),
        "missed_as_background_ml": (true_tumour & (prediction == BACKGROUND)).sum(),
        "false_on_kidney_with_tumour_ml": on_tumour_region.sum(),
        "false_on_kidney_without_tumour_ml": (~on_tumour_region).sum(),
        "false_on_cyst_ml": (predicted_tumour & (truth == CYST)).sum(),
        "false_on_background_ml": (predicted_tumour & (truth == BACKGROUND)).sum(),
    }
    return {name: float(value) * voxel_ml for name, value in voxels.items()}


def tumour_dice(volumes: dict[str, float]) -> float:
    """Dice of the tumour label from the volumes (nan when neither truth nor prediction holds tumour)."""
    predicted = volumes["found_ml"] + sum(v for k, v in volumes.items() if k.startswith("false_on_"))
    total = volumes["tumour_ml"] + predicted
    return 2 * volumes["found_ml"] / total if total else float("nan")


def case_volumes(prediction_file: Path, label_file: Path) -> dict[str, float]:
    """One case's volumes, read as `kits_evaluate` reads it (label values 0-3, the same geometry)."""
    if not label_file.is_file():
        raise SystemExit(f"{label_file}: no reference label map for {prediction_file.name}")
    try:
        truth, truth_props = load_label_map(label_file)
        prediction, prediction_props = load_label_map(prediction_file)
        check_geometry(label_file.name, truth_props, prediction_props)
    except KitssegError as exc:
        raise SystemExit(f"{prediction_file}: {exc}") from None
    voxel_ml = float(np.prod(truth_props.spacing_mm)) / 1000.0
    return tumour_error_volumes(prediction, truth, voxel_ml)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="folder of CASE.nii.gz label maps (kits_predict's output)")
    parser.add_argument("labels", type=Path, help="folder of the reference CASE.nii.gz label maps")
    args = parser.parse_args()
    files = sorted(args.predictions.glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"{args.predictions}: no .nii.gz predictions")
    print("| case | tumour Dice | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    totals = dict.fromkeys(COLUMNS, 0.0)
    for file in files:
        volumes = case_volumes(file, args.labels / file.name)
        totals = {k: totals[k] + volumes[k] for k in COLUMNS}
        case = file.name.removesuffix(".nii.gz")
        print(f"| {case} | {tumour_dice(volumes):.3f} | " + " | ".join(f"{volumes[k]:.1f}" for k in COLUMNS) + " |")
    print("| all cases (pooled) | " + f"{tumour_dice(totals):.3f} | " + " | ".join(f"{totals[k]:.1f}" for k in COLUMNS)
          + " |")


if __name__ == "__main__":
    sys.exit(main())
