"""Share of padding voxels (outside the real image) in the fine crops the training sampler draws.

    python benchmarks/crop_padding_share.py ROOT/preprocessed/KiTS19 --crops 5000 --seed 0

Crops are placed exactly as kits_train places them, from the plans' fine recipe (centre class
first, VOI jitter), at the plans' patch size (what the network sees) and at the enlarged size
augmentation crops from (rotations and scaling pull in its outer voxels). A cached fine array is
real image throughout (clipped to the scan), so a crop's voxels outside it are padding.
Issue #16 asks for under 5 % at the patch size on the 30 benchmark training cases.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kitsseg.planning import FINE, StagePlan, load_plans  # noqa: E402
from kitsseg.training.augmentation import sample_size  # noqa: E402
from kitsseg.training.sampling import CachedVolume, CropSampler, load_stage_volumes  # noqa: E402


def fine_sampling(preprocessed: Path, seed: int) -> tuple[StagePlan, list[CachedVolume], CropSampler]:
    """The fine stage's plan, every cached fine array and the sampler kits_train builds from the plans."""
    plans = load_plans(preprocessed / "plans.json")
    stage = plans.stage(FINE)
    case_ids = sorted(p.stem for p in (preprocessed / FINE).glob("*.json"))
    volumes = load_stage_volumes(preprocessed / FINE, case_ids, seed)
    return stage, volumes, CropSampler.for_stage(stage, plans.intensity.padding_value, stage.training)


def outside_voxels(start, size, shape) -> int:
    """Voxels of the box [start, start + size) that lie outside an array of `shape`.

    >>> outside_voxels((-2, 0, 0), (4, 3, 3), (10, 10, 10))
    18
    """
    inside = np.prod([max(0, min(s + n, length) - max(s, 0)) for s, n, length in zip(start, size, shape)])
    return int(np.prod(size) - inside)


def padding_share(sampler: CropSampler, volumes, size, crops: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    padded = 0
    for _ in range(crops):
        volume, start = sampler.place(volumes, size, rng)
        padded += outside_voxels(start, size, volume.label.shape)
    return padded / (crops * float(np.prod(size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preprocessed", type=Path, help="a dataset's preprocessed folder (plans.json, 3d_fine/)")
    parser.add_argument("--crops", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stage, volumes, sampler = fine_sampling(args.preprocessed, args.seed)
    print(f"{args.preprocessed}: {len({v.case_id for v in volumes})} cases, {len(volumes)} fine arrays, "
          f"{args.crops} crops, seed {args.seed}; fractions {sampler.class_fractions}, "
          f"VOI jitter {stage.training.voi_jitter_mm} mm")
    for name, size in (("patch", stage.patch_size), ("augmentation sample", sample_size(stage.patch_size, True))):
        share = padding_share(sampler, volumes, size, args.crops, args.seed)
        print(f"padding share, {name} {'x'.join(map(str, size))}: {100 * share:.2f} %")


if __name__ == "__main__":
    main()
