"""Fully-convolutional prediction of a whole volume: one padded pass, or Gaussian-blended tiles.

`predict_fn` is any callable from a (1, 1, *tile) tensor to (1, C, *tile) logits or
probabilities, so this is testable without a network:

>>> import torch
>>> out = predict_volume(lambda x: torch.cat([x, 2 * x], 1), np.ones((5, 6, 7), np.float32), 2, stride=4)
>>> out.shape, float(out[1].max())
((2, 5, 6, 7), 2.0)
"""
from __future__ import annotations

from itertools import product
from typing import Callable, Sequence

import numpy as np
import torch

PAD_VALUE = -1.0
ONE_PASS_PATCHES = 2  # larger volumes go in tiles: one pass over n patch volumes needs ~0.6n GB on a CPU


def _pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pads = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pads, constant_values=PAD_VALUE)


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


def tile_for(shape: Sequence[int], patch_size: Sequence[int], max_patches: int = ONE_PASS_PATCHES):
    """None (one padded pass) for volumes up to `max_patches` patches, else the patch as tile."""
    return None if np.prod(shape) <= max_patches * np.prod(patch_size) else tuple(patch_size)


@torch.no_grad()
def predict_volume(predict_fn: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, num_classes: int,
                   stride: int, tile: Sequence[int] | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """(C, z, y, x) float32 outputs of `predict_fn` over a `(z, y, x)` image.

    With `tile` None (or larger than the image) the image is padded to a multiple of
    `stride` and predicted in one pass; otherwise tiles of size `tile` with half
    overlap are blended with Gaussian weights.
    """
    shape = image.shape
    if tile is None or all(n <= t for n, t in zip(shape, tile)):
        padded = _pad_to(image, [int(np.ceil(n / stride) * stride) for n in shape])
        out = predict_fn(torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None, None].to(device))
        return out[0, :, : shape[0], : shape[1], : shape[2]].float().cpu().numpy()
    tile = tuple(int(t) for t in tile)
    padded = _pad_to(image, tile)
    weights = gaussian_importance(tile)
    total = np.zeros((num_classes, *padded.shape), np.float32)
    norm = np.zeros(padded.shape, np.float32)
    starts = [_tile_starts(n, t, max(1, t // 2)) for n, t in zip(padded.shape, tile)]
    for z, y, x in product(*starts):
        box = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
        piece = torch.from_numpy(np.ascontiguousarray(padded[box], np.float32))[None, None].to(device)
        total[(slice(None), *box)] += predict_fn(piece)[0].float().cpu().numpy() * weights
        norm[box] += weights
    return (total / norm)[:, : shape[0], : shape[1], : shape[2]]
