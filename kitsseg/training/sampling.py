"""Training crops: the preprocessed stage arrays held in memory, and where crops are drawn.

Coarse crops lie anywhere in the 6 mm volume (padded when it is smaller than the patch).
Fine crops are centred on a ground-truth kidney voxel (the paper), on a tumour or cyst
voxel with probability `lesion_fraction`, or anywhere in the VOI with `outside_fraction`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kitsseg.errors import KitssegError
from kitsseg.preprocessing import load_npz, read_sidecar

MAX_CENTRES = 20_000
PAD_IMAGE = -1.0  # the bottom of the [-1, 1] window: air and fat


@dataclass
class CachedVolume:
    """One preprocessed array pair with candidate crop centres (voxel coordinates)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    foreground: np.ndarray  # (N, 3) voxels with label > 0
    lesion: np.ndarray  # (M, 3) voxels with label >= 2 (tumour, cyst)


def _subsample(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(coords) > MAX_CENTRES:
        coords = coords[rng.choice(len(coords), MAX_CENTRES, replace=False)]
    return coords.astype(np.int32)


def load_stage_volumes(stage_dir: Path, case_ids: Sequence[str], seed: int = 0) -> list[CachedVolume]:
    """Every array of the given cases (one per case for coarse, one per VOI for fine)."""
    rng = np.random.default_rng(seed)
    volumes = []
    for case_id in case_ids:
        try:
            entries = read_sidecar(stage_dir, case_id)["arrays"]
        except FileNotFoundError:
            raise KitssegError(f"{stage_dir / case_id}.json: not preprocessed "
                               "(run kits_plan_and_preprocess)") from None
        for entry in entries:
            image, label = load_npz(stage_dir / entry["file"])
            volumes.append(CachedVolume(case_id, image, label, _subsample(np.argwhere(label > 0), rng),
                                        _subsample(np.argwhere(label >= 2), rng)))
    if not volumes:
        raise KitssegError(f"{stage_dir}: no preprocessed arrays for the requested cases")
    return volumes


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """array[start : start + size] per axis, padded with `pad_value` where it leaves the array."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, length in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, length)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out


@dataclass(frozen=True)
class CropSampler:
    """Draws crop centres for one stage."""

    centred_on_mask: bool
    lesion_fraction: float = 0.33
    outside_fraction: float = 0.0

    def centre(self, volume: CachedVolume, rng: np.random.Generator) -> np.ndarray:
        draw = rng.random()
        if self.centred_on_mask and len(volume.foreground) and draw >= self.outside_fraction:
            if draw < self.outside_fraction + self.lesion_fraction and len(volume.lesion):
                return volume.lesion[rng.integers(len(volume.lesion))]
            return volume.foreground[rng.integers(len(volume.foreground))]
        return np.array([rng.integers(n) for n in volume.label.shape])

    def sample(self, volume: CachedVolume, size: Sequence[int], rng: np.random.Generator):
        """(image, label) crops of `size` around a drawn centre; coarse crops stay inside when they fit."""
        size = np.asarray(size)
        shape = np.asarray(volume.label.shape)
        if self.centred_on_mask:
            start = self.centre(volume, rng) - size // 2
        else:
            low, high = np.minimum(0, shape - size), np.maximum(0, shape - size)
            start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
        return crop(volume.image, start, size, PAD_IMAGE), crop(volume.label, start, size, 0)
