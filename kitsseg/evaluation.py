"""KiTS19 and KiTS21/23 metrics for label maps.

Regions: kidney = labels {1, 2, 3} (KiTS19's "kidney", label > 0; KiTS23's "kidney and masses"),
masses = {2, 3}, tumor = {2}. Metrics per region: `dice`, `sd` (surface Dice at the KiTS23
tolerance), `hd95` (mm), `vol_err_ml` (absolute). `composite_kits19` = mean of kidney and tumour Dice.

Surface Dice and HD95 follow the official KiTS21/23 scorer (DeepMind's surface-distance method,
reimplemented in `kitsseg.surface_distance`): surface elements on the voxel corners, weighted by
their area, with distances between surface elements; HD95 is the larger of the two directed
area-weighted 95th percentiles (the official scorer reports no HD95; this is that method's).
Both masks empty: Dice 1, surface Dice 1, HD95 0. One empty: Dice 0, surface Dice 0, HD95 NaN
(Dice and surface Dice as the official scorer sets them). A NaN has no place in a mean or median:
summary.json's HD95 means and medians are over the cases with a defined distance, and `undefined`
counts, per column, the cases left out (a missed tumour lowers no HD95 mean, so the count says so).

`metrics="kits23"` writes the official scorer's columns only, under its names (KITS23_COLUMNS:
caseID, Dice_kidney, Dice_masses, Dice_tumor, SD_kidney, SD_masses, SD_tumor); its closing
"average" row is not written (means are in summary.json). `kits19` and `all` keep kitsseg's names.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from kitsseg.atomic import atomic_path, write_json
from kitsseg.dataset import check_geometry
from kitsseg.errors import KitssegError
from kitsseg.io import IMAGE_SUFFIXES, CaseProperties, case_id_of, load_volume
from kitsseg.surface_distance import robust_hausdorff, surface_dice, surface_distances

REGIONS = {"kidney": (1, 2, 3), "masses": (2, 3), "tumor": (2,)}
SURFACE_TOLERANCE_MM = {"kidney": 1.0330772532390826, "masses": 1.1328796488598762,  # KiTS21/23 official
                        "tumor": 1.1498198361434828}
METRIC_SETS = {"kits19": ("kidney_dice", "tumor_dice", "composite_kits19")}
KITS23_COLUMNS = {"case": "caseID", "kidney_dice": "Dice_kidney", "masses_dice": "Dice_masses",  # as in the
                  "tumor_dice": "Dice_tumor", "kidney_sd": "SD_kidney",  # official evaluation.csv
                  "masses_sd": "SD_masses", "tumor_sd": "SD_tumor"}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


def surface_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float],
                    tolerance_mm: float) -> tuple[float, float]:
    """(surface Dice at `tolerance_mm`, HD95 in mm), surfels weighted by area as in the KiTS21/23 scorer."""
    if not prediction.any() and not reference.any():
        return 1.0, 0.0
    if not prediction.any() or not reference.any():
        return 0.0, float("nan")
    surfaces = surface_distances(reference, prediction, spacing_mm)
    return surface_dice(surfaces, tolerance_mm), robust_hausdorff(surfaces, 95.0)


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """Every metric of every region for one case (canonical label maps, same grid)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    row = {}
    for region, labels in REGIONS.items():
        p, r = np.isin(prediction, labels), np.isin(reference, labels)
        sd, hd95 = surface_metrics(p, r, spacing_mm, SURFACE_TOLERANCE_MM[region])
        row.update({f"{region}_dice": dice(p, r), f"{region}_sd": sd, f"{region}_hd95": hd95,
                    f"{region}_vol_err_ml": abs(int(p.sum()) - int(r.sum())) * voxel_ml})
    row["composite_kits19"] = (row["kidney_dice"] + row["tumor_dice"]) / 2
    return row


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise KitssegError(f"{folder}: folder not found")
    return {case_id_of(p): p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(IMAGE_SUFFIXES)}


def load_label_map(path: Path) -> tuple[np.ndarray, CaseProperties]:
    """A canonical uint8 label map; integer values 0-3 only."""
    labels, props = load_volume(path)
    if not np.issubdtype(labels.dtype, np.integer):
        raise KitssegError(f"{path}: a label map must hold integers, not {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 3:
        raise KitssegError(f"{path}: label values must lie in 0-3 (found {low} to {high})")
    return np.ascontiguousarray(labels, dtype=np.uint8), props


def evaluate_case(reference_path: Path, prediction_path: Path | None) -> dict[str, float]:
    reference, ref_props = load_label_map(reference_path)
    if prediction_path is None:
        prediction = np.zeros_like(reference)
    else:
        prediction, pred_props = load_label_map(prediction_path)
        try:
            check_geometry(reference_path.name, ref_props, pred_props)
        except KitssegError as exc:
            raise KitssegError(f"{prediction_path}: geometry differs from the reference ({exc})") from None
    return case_metrics(prediction, reference, ref_props.spacing_mm)


def _finite_or_none(value) -> float | None:
    """JSON has no NaN: a metric undefined for every case is null."""
    return float(value) if np.isfinite(value) else None


def evaluate_folders(reference_dir: Path, prediction_dir: Path, out_dir: Path | None = None,
                     metrics: str = "all", quiet: bool = False) -> dict:
    """Score every reference case; write per_case.csv and summary.json into `out_dir` (default: predictions)."""
    references, predictions = _label_files(reference_dir), _label_files(prediction_dir)
    if not references:
        raise KitssegError(f"{reference_dir}: no label maps found")
    rows = []
    for case_id, reference_path in tqdm(references.items(), desc="evaluate", disable=quiet, unit="case"):
        if case_id not in predictions:
            warnings.warn(f"case {case_id}: no prediction in {prediction_dir}, counted as all background")
        rows.append({"case": case_id, **evaluate_case(reference_path, predictions.get(case_id))})
    table = pd.DataFrame(rows)
    if metrics in METRIC_SETS:
        table = table[["case", *METRIC_SETS[metrics]]]
    elif metrics == "kits23":
        table = table[list(KITS23_COLUMNS)].rename(columns=KITS23_COLUMNS)
    out_dir = Path(out_dir or prediction_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "per_case.csv") as tmp:
        table.to_csv(tmp, index=False)
    columns = list(table.columns[1:])  # all but the case id
    summary = {"mean": {c: _finite_or_none(table[c].mean()) for c in columns},
               "median": {c: _finite_or_none(table[c].median()) for c in columns},
               "num_cases": len(table), "metrics": metrics,
               "undefined": {c: int(n) for c, n in table[columns].isna().sum().items() if n}}
    write_json(summary, out_dir / "summary.json")
    return summary
