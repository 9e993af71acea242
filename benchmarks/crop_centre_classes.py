"""Which label the training sampler centres fine crops on, and how often on small lesions.

    python benchmarks/crop_centre_classes.py ROOT/preprocessed/KiTS23 --crops 20000 --seed 0

Crops are drawn exactly as kits_train draws them, from the plans' fine recipe (centre class first,
then a VOI holding it, then one of its voxels). The lesion class pools tumour and cyst, so on a
dataset with cysts the tumour's share of lesion-centred crops depends on how many VOIs hold cysts
and how large they are. A lesion centre counts as small when its connected component of that label
in the fine array is under --small-ml.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crop_padding_share import fine_sampling  # noqa: E402
from kitsseg.training.sampling import CachedVolume, CropSampler  # noqa: E402

LABEL_NAMES = {0: "background", 1: "kidney", 2: "tumour", 3: "cyst"}


def component_volumes_ml(label: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Per voxel, the volume in ml of its connected component of its own label (0 for background)."""
    out = np.zeros(label.shape, dtype=np.float32)
    for value in np.unique(label[label >= 2]):
        mask = label == value
        components = ndi.label(mask)[0]
        out[mask] = np.bincount(components.ravel())[components[mask]] * voxel_ml
    return out


def centre_counts(sampler: CropSampler, volumes: list[CachedVolume], voxel_ml: float, crops: int, seed: int,
                  small_ml: float) -> Counter:
    """Counts of crop centres per label name, plus 'small <label>' for lesion centres in small components."""
    rng = np.random.default_rng(seed)
    sizes = {id(v): component_volumes_ml(v.label, voxel_ml) for v in volumes}
    counts = Counter()
    for _ in range(crops):
        volume, centre = sampler.draw(volumes, rng)
        value = int(volume.label[tuple(centre)])
        counts[LABEL_NAMES[value]] += 1
        if value >= 2 and sizes[id(volume)][tuple(centre)] < small_ml:
            counts[f"small {LABEL_NAMES[value]}"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preprocessed", type=Path, help="a dataset's preprocessed folder (plans.json, 3d_fine/)")
    parser.add_argument("--crops", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small-ml", type=float, default=5.0, help="lesion components under this count as small")
    args = parser.parse_args()
    stage, volumes, sampler = fine_sampling(args.preprocessed, args.seed)
    voxel_ml = float(np.prod(stage.spacing_mm)) / 1000.0
    counts = centre_counts(sampler, volumes, voxel_ml, args.crops, args.seed, args.small_ml)
    print(f"{args.preprocessed}: {len({v.case_id for v in volumes})} cases, {len(volumes)} fine arrays, "
          f"{args.crops} crops, seed {args.seed}; fractions {sampler.class_fractions}")
    lesion = counts["tumour"] + counts["cyst"]
    for name in ("background", "kidney", "tumour", "cyst"):
        line = f"{name}: {counts[name] / args.crops:.3f} of crops"
        if name in ("tumour", "cyst") and lesion:
            line += (f", {counts[name] / lesion:.3f} of lesion-centred crops; in components under "
                     f"{args.small_ml:g} ml: {counts['small ' + name] / args.crops:.3f} of crops")
        print(line)


if __name__ == "__main__":
    main()
