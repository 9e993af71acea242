"""Lesion paste: a tumour or cyst of the training cases pasted into a fine crop's kidney.

Small tumours decide tumour Dice but are rare in KiTS training sets (benchmarks/RESULTS.md: the
KiTS23 training split holds three tumour pieces under 10 ml, its test split nine). With probability
`fraction` a crop that holds kidney gets one lesion from the bank of the training arrays' lesions
(each connected tumour/cyst region: its image and labels), rescaled to a volume drawn
log-uniformly in `volume_ml`, mirrored at random, centred on one of the crop's kidney voxels and
written over kidney and lesion voxels only, its outer layer blended with the crop's image.
The idea is TumorCP's (Yang et al., MICCAI 2021), which pastes KiTS19 tumours between kidneys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from kitsseg.training.sampling import CachedVolume

PASTE_VOLUME_ML = (1.0, 30.0)
MIN_LESION_VOXELS = 8
EDGE_VOXELS = 2.0  # voxels this deep inside the lesion (Euclidean) take its image fully


@dataclass(frozen=True)
class Lesion:
    """One connected lesion region: the image of its bounding box and its labels (0 outside it)."""

    image: np.ndarray
    label: np.ndarray

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.label))


def lesion_bank(volumes: Sequence[CachedVolume], min_voxels: int = MIN_LESION_VOXELS) -> list[Lesion]:
    """Every 26-connected lesion (label >= 2) region of the arrays with at least `min_voxels` voxels."""
    bank = []
    for volume in volumes:
        regions, _ = ndi.label(volume.label >= 2, structure=np.ones((3, 3, 3)))
        for index, box in enumerate(ndi.find_objects(regions), start=1):
            inside = regions[box] == index
            if np.count_nonzero(inside) >= min_voxels:
                bank.append(Lesion(volume.image[box].astype(np.float32),
                                   np.where(inside, volume.label[box], 0).astype(np.uint8)))
    return bank


def rescaled(lesion: Lesion, target_voxels: float, flips: Sequence[bool]) -> Lesion:
    """The lesion zoomed isotropically to about `target_voxels` voxels (image linear, labels
    nearest) and mirrored along the axes where `flips` is True."""
    scale = (target_voxels / lesion.voxels) ** (1 / 3)
    scale = max(scale, 1.0 / min(lesion.label.shape))  # keep at least one voxel per axis
    image = ndi.zoom(lesion.image, scale, order=1, mode="nearest", grid_mode=True)
    label = ndi.zoom(lesion.label, scale, order=0, mode="nearest", grid_mode=True)
    axes = tuple(a for a, flip in enumerate(flips) if flip)
    return Lesion(np.flip(image, axes), np.flip(label, axes))


def paste(image: np.ndarray, label: np.ndarray, lesion: Lesion, centre: Sequence[int]) -> None:
    """Write `lesion` centred on `centre` into the crop, in place, over kidney and lesion voxels only."""
    shape = np.asarray(lesion.label.shape)
    start = np.asarray(centre) - shape // 2
    low, high = np.maximum(start, 0), np.minimum(start + shape, label.shape)
    if np.any(high <= low):
        return
    target = tuple(slice(a, b) for a, b in zip(low, high))
    source = tuple(slice(a - s, b - s) for a, b, s in zip(low, high, start))
    inside = lesion.label > 0
    depth = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1]  # the box's faces count as outside
    alpha = np.minimum(depth / EDGE_VOXELS, 1.0)[source]
    written = inside[source] & (label[target] >= 1)
    alpha = np.where(written, alpha, 0.0)
    image[target] = alpha * lesion.image[source] + (1 - alpha) * image[target]
    label[target] = np.where(written, lesion.label[source], label[target])


@dataclass(frozen=True)
class LesionPaste:
    """Pastes a bank lesion into a share `fraction` of the crops that hold kidney."""

    bank: tuple[Lesion, ...]
    fraction: float
    voxel_ml: float
    volume_ml: tuple[float, float] = PASTE_VOLUME_ML

    @classmethod
    def from_volumes(cls, volumes: Sequence[CachedVolume], fraction: float,
                     spacing_mm: Sequence[float]) -> "LesionPaste | None":
        """The paste for a stage's training arrays; None when `fraction` is 0 or they hold no lesion."""
        bank = tuple(lesion_bank(volumes)) if fraction > 0 else ()
        return cls(bank, fraction, float(np.prod(spacing_mm)) / 1000) if bank else None

    def __call__(self, image: np.ndarray, label: np.ndarray, margin: Sequence[int], rng: np.random.Generator) -> None:
        """Maybe paste one lesion, in place, centred on a kidney voxel at least `margin` voxels from
        the crop's faces (the part that augmentation keeps)."""
        if rng.random() >= self.fraction:
            return
        inner = tuple(slice(m, n - m) for m, n in zip(margin, label.shape))
        kidney = np.argwhere(label[inner] == 1)
        if len(kidney) == 0:
            return
        centre = kidney[rng.integers(len(kidney))] + np.asarray(margin)
        low, high = np.log(self.volume_ml)
        target_voxels = np.exp(rng.uniform(low, high)) / self.voxel_ml
        lesion = self.bank[rng.integers(len(self.bank))]
        paste(image, label, rescaled(lesion, target_voxels, rng.random(3) < 0.5), centre)
