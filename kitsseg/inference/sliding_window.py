"""Fully-convolutional prediction of a whole volume: one padded pass, or Gaussian-blended tiles.

`tile_for` plans the tiles: one pass when the volume fits the voxels a pass may take
(memory), else the tile that covers it with the fewest network voxels, tiles overlapping
by a quarter patch. (Patch-sized tiles overlapping by half, nnU-Net's way, made 45 passes
over case_00151's kidney VOI: 5.7 times its voxels; planned tiles make 16, 2 times.)

`predict_fn` is any callable from a (1, 1, *tile) float32 array to (1, C, *tile) logits or
probabilities (an engine's ensemble, `kitsseg.inference.engine`; no torch here), so this is
testable without a network:

>>> out = predict_volume(lambda x: np.concatenate([x, 2 * x], 1), np.ones((5, 6, 7), np.float32), 2, stride=4)
>>> out.shape, float(out[1].max())
((2, 5, 6, 7), 2.0)
"""
from __future__ import annotations

from itertools import product
from typing import Callable, Sequence

import numpy as np

ONE_PASS_PATCHES = 2  # without a voxel limit, larger volumes go in tiles (one pass over n patches: ~0.6n GB on a CPU)
OVERLAP = 0.25  # planned tiles overlap by this fraction of a patch


def _pad_to(array: np.ndarray, shape: Sequence[int], pad_value: float) -> np.ndarray:
    pads = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pads, constant_values=pad_value)


def gaussian_importance(tile: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Weights that favour tile centres (as nnU-Net's), never zero."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / max(n * sigma_scale, 1e-3)) ** 2) for n in tile]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clip(1e-3).astype(np.float32)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def planned_overlap(patch_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(p * OVERLAP) for p in patch_size)


def _round_up(length: float, stride: int) -> int:
    return int(np.ceil(length / stride)) * stride


def _axis_tiles(length: int, patch: int, stride: int, overlap: int) -> list[int]:
    """Tile lengths (multiples of `stride`, none under half the patch) covering `length` in 1, 2, ... tiles."""
    smallest = min(_round_up(patch / 2, stride), _round_up(length, stride))
    lengths, count = [], 1
    while not lengths or lengths[-1] > smallest:
        tile = _round_up(np.ceil((length + (count - 1) * overlap) / count), stride)
        lengths.append(max(smallest, tile))
        count += 1
    return sorted(set(lengths))


def network_voxels(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int]) -> int:
    """Voxels the network sees when `shape` is predicted in tiles of `tile`."""
    counts = [len(_tile_starts(max(n, t), t, max(1, t - o))) for n, t, o in zip(shape, tile, overlap)]
    return int(np.prod(counts) * np.prod(tile))


def tile_for(shape: Sequence[int], patch_size: Sequence[int], max_voxels: int | None = None,
             stride: int | None = None) -> tuple[int, ...] | None:
    """None (one padded pass) when the volume, padded to `stride`, has at most `max_voxels`
    (default: `ONE_PASS_PATCHES` patches); else the tile. Given the network's `stride`, the
    tile is planned: of the tiles within `max_voxels` (else the smallest, half a patch), the
    one the network sees the fewest voxels with; without `stride`, the patch (overlapping by half)."""
    limit = ONE_PASS_PATCHES * np.prod(patch_size) if max_voxels is None else max_voxels
    padded = [_round_up(n, stride or 1) for n in shape]
    if np.prod(padded) <= limit:
        return None
    if stride is None:
        return tuple(patch_size)
    overlap = planned_overlap(patch_size)
    options = [_axis_tiles(n, p, stride, o) for n, p, o in zip(shape, patch_size, overlap)]
    fitting = [t for t in product(*options) if np.prod(t) <= limit] or [tuple(o[0] for o in options)]
    return min(fitting, key=lambda t: (network_voxels(shape, t, overlap), np.prod(t)))


def predict_volume(predict_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, num_classes: int,
                   stride: int, tile: Sequence[int] | None = None,
                   overlap: Sequence[int] | None = None, pad_value: float = -1.0) -> np.ndarray:
    """(C, z, y, x) float32 outputs of `predict_fn` over a `(z, y, x)` image.

    With `tile` None (or larger than the image) the image is padded to a multiple of
    `stride` and predicted in one pass; otherwise tiles of size `tile` overlapping by
    `overlap` voxels (default: half a tile) are blended with Gaussian weights. Padding takes
    `pad_value`: what air normalises to (`IntensityConfig.padding_value`; -1 for the window scheme).
    """
    shape = image.shape
    if tile is None or all(n <= t for n, t in zip(shape, tile)):
        padded = _pad_to(image, [int(np.ceil(n / stride) * stride) for n in shape], pad_value)
        out = predict_fn(np.ascontiguousarray(padded, np.float32)[None, None])
        return out[0, :, : shape[0], : shape[1], : shape[2]]
    tile = tuple(int(t) for t in tile)
    overlap = [t - t // 2 for t in tile] if overlap is None else overlap
    padded = _pad_to(image, tile, pad_value)
    weights = gaussian_importance(tile)
    total = np.zeros((num_classes, *padded.shape), np.float32)
    norm = np.zeros(padded.shape, np.float32)
    starts = [_tile_starts(n, t, max(1, t - o)) for n, t, o in zip(padded.shape, tile, overlap)]
    for z, y, x in product(*starts):
        box = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
        piece = np.ascontiguousarray(padded[box], np.float32)[None, None]
        total[(slice(None), *box)] += predict_fn(piece)[0] * weights
        norm[box] += weights
    total /= norm
    return total[:, : shape[0], : shape[1], : shape[2]]
