"""Training crops: the preprocessed stage arrays held in memory, and where crops are drawn.

Coarse crops lie anywhere in the 6 mm volume (padded when it is smaller than the patch).
Fine crops are drawn class first: the centre's class (a lesion with `lesion_fraction`, background
inside the VOI with `outside_fraction`, kidney otherwise), then a VOI that holds that class, then
one of its voxels. So the requested fractions hold however few VOIs have a lesion (drawing a VOI
first dilutes them). Background centres lie in the VOI with each face moved at random by up to
`voi_jitter_voxels`, as the VOI found at inference is off by the coarse stage's error. Fine arrays
hold real image around the VOI (preprocessing's context); crops pad with `pad_value` (air) only
where they leave it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kitsseg.boxes import Box
from kitsseg.errors import KitssegError
from kitsseg.planning import StagePlan
from kitsseg.preprocessing import load_npz, read_sidecar

MAX_CENTRES = 20_000
BACKGROUND_TRIES = 32
CENTRE_CLASSES = ("background", "kidney", "lesion")


@dataclass
class CachedVolume:
    """One preprocessed array pair, the VOI inside it and its candidate crop centres (voxel coordinates)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    voi: Box  # where crops are centred: the kidney's box + VOI margin (fine), the whole array (coarse)
    kidney: np.ndarray  # (N, 3) voxels of class 1 inside the VOI
    lesion: np.ndarray  # (M, 3) voxels of class >= 2 (tumour, cyst) inside the VOI

    def has(self, centre_class: str) -> bool:
        """Whether a crop can be centred on this class here (every VOI has background)."""
        return centre_class == "background" or len(getattr(self, centre_class)) > 0


def _subsample(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(coords) > MAX_CENTRES:
        coords = coords[rng.choice(len(coords), MAX_CENTRES, replace=False)]
    return coords.astype(np.int32)


def _voxels_in(mask: np.ndarray, voi: Box, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) coordinates of the mask's voxels inside the VOI (at most MAX_CENTRES of them)."""
    return _subsample(np.argwhere(mask[voi]) + [b.start for b in voi], rng)


def cached_volume(case_id: str, image: np.ndarray, label: np.ndarray, voi: Box | None,
                  rng: np.random.Generator) -> CachedVolume:
    if voi is None:
        voi = tuple(slice(0, n) for n in label.shape)
    return CachedVolume(case_id, image, label, voi, _voxels_in(label == 1, voi, rng), _voxels_in(label >= 2, voi, rng))


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
            volumes.append(cached_volume(case_id, image, label, entry.get("voi"), rng))
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


def jitter_voxels(jitter_mm: Sequence[float], spacing_mm: Sequence[float]) -> tuple[int, int, int]:
    """A VOI jitter in mm as whole voxels of the stage's grid.

    >>> jitter_voxels((6.0, 6.0, 6.0), (1.5, 1.5, 1.0))
    (4, 4, 6)
    """
    return tuple(int(round(j / s)) for j, s in zip(jitter_mm, spacing_mm))


def jittered_box(box: Box, jitter: Sequence[int], shape: Sequence[int], rng: np.random.Generator) -> Box:
    """`box` with each face moved by a uniform whole number of voxels in [-jitter, jitter], kept
    inside the array and at least one voxel wide."""
    out = []
    for b, j, n in zip(box, jitter, shape):
        lo = int(np.clip(b.start + rng.integers(-j, j + 1), 0, n - 1))
        hi = int(np.clip(b.stop + rng.integers(-j, j + 1), lo + 1, n))
        out.append(slice(lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class CropSampler:
    """Draws crops for one stage; `pad_value` is the plans' `intensity.padding_value`."""

    centred_on_mask: bool
    pad_value: float
    lesion_fraction: float = 0.33
    outside_fraction: float = 0.0
    voi_jitter_voxels: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def for_stage(cls, stage: StagePlan, padding_value: float, recipe) -> "CropSampler":
        """The sampler kits_train uses for `stage` with `recipe` (its TrainingRecipe or TrainConfig)."""
        return cls(not stage.merges_foreground, padding_value, recipe.lesion_fraction, recipe.outside_fraction,
                   jitter_voxels(recipe.voi_jitter_mm, stage.spacing_mm))

    def __post_init__(self):
        if min(self.lesion_fraction, self.outside_fraction) < 0 or self.lesion_fraction + self.outside_fraction > 1:
            raise KitssegError(f"crop fractions: lesion {self.lesion_fraction} and outside {self.outside_fraction} "
                               "must be at least 0 and add up to at most 1")

    @property
    def class_fractions(self) -> dict[str, float]:
        return {"background": self.outside_fraction, "lesion": self.lesion_fraction,
                "kidney": 1.0 - self.outside_fraction - self.lesion_fraction}

    def centre_class(self, volumes: Sequence[CachedVolume], rng: np.random.Generator) -> str:
        """A class by the fractions, among those some volume holds (their fractions renormalised)."""
        names = [c for c, f in self.class_fractions.items() if f > 0 and any(v.has(c) for v in volumes)]
        if not names:
            return "background"
        weights = np.array([self.class_fractions[c] for c in names])
        return names[rng.choice(len(names), p=weights / weights.sum())]

    def centre(self, volume: CachedVolume, centre_class: str, rng: np.random.Generator) -> np.ndarray:
        """A voxel of the class in the volume's VOI (background: in the jittered VOI)."""
        if centre_class != "background":
            candidates = getattr(volume, centre_class)
            return candidates[rng.integers(len(candidates))]
        region = jittered_box(volume.voi, self.voi_jitter_voxels, volume.label.shape, rng)
        for _ in range(BACKGROUND_TRIES):
            voxel = np.array([rng.integers(b.start, b.stop) for b in region])
            if volume.label[tuple(voxel)] == 0:
                break
        return voxel

    def draw(self, volumes: Sequence[CachedVolume], rng: np.random.Generator) -> tuple[CachedVolume, np.ndarray | None]:
        """(volume, crop centre); coarse: a volume at random and no centre (the crop lies anywhere)."""
        if not self.centred_on_mask:
            return volumes[rng.integers(len(volumes))], None
        centre_class = self.centre_class(volumes, rng)
        holding = [v for v in volumes if v.has(centre_class)]
        volume = holding[rng.integers(len(holding))]
        return volume, self.centre(volume, centre_class, rng)

    def place(self, volumes: Sequence[CachedVolume], size: Sequence[int],
              rng: np.random.Generator) -> tuple[CachedVolume, np.ndarray]:
        """(volume, crop start): around a drawn centre; coarse crops anywhere, inside when they fit."""
        volume, centre = self.draw(volumes, rng)
        size = np.asarray(size)
        if centre is not None:
            return volume, centre - size // 2
        shape = np.asarray(volume.label.shape)
        low, high = np.minimum(0, shape - size), np.maximum(0, shape - size)
        return volume, np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])

    def sample(self, volumes: Sequence[CachedVolume], size: Sequence[int], rng: np.random.Generator):
        """(image, label) crops of `size` from a placed crop (padded with `pad_value` outside the array)."""
        volume, start = self.place(volumes, size, rng)
        return crop(volume.image, start, size, self.pad_value), crop(volume.label, start, size, 0)
