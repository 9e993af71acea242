"""Separable resampling between voxel grids that span the same physical extent.

Each axis is resampled by a small weight matrix: box (area) weights when the axis
shrinks, which anti-alias, and linear interpolation when it grows. Voxel centres
follow the half-voxel convention (output voxel i covers [i, i+1) * n_in / n_out
input voxels), so resampling commutes with flips and transposes, and the output
grid spans exactly the input's extent. Work is chunked along the array's slowest
axis, so an int16 CT is never converted to float as a whole; chunks are slices (views),
never gathers, so a strided view of a CT (the canonical orientation of a KiTS scan) is
not copied whole for each chunk.

>>> resample(np.array([[[0., 1., 2., 3.]]]), (1, 1, 2))
array([[[0.5, 2.5]]], dtype=float32)
>>> resample(np.array([[[0., 2.]]]), (1, 1, 4))
array([[[0. , 0.5, 1.5, 2. ]]], dtype=float32)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CHUNK_VOXELS = 2**23


def axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: box averaging when shrinking, linear interpolation otherwise."""
    if n_out == n_in:
        return np.eye(n_in, dtype=np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if n_out < n_in:  # each output voxel averages the input interval it covers
        edges = np.arange(n_out + 1) * scale
        for i in range(n_out):
            lo, hi = edges[i], edges[i + 1]
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                weights[i, j] = min(hi, j + 1) - max(lo, j)
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        centres = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        left = np.floor(centres).astype(int)
        right = np.minimum(left + 1, n_in - 1)
        frac = centres - left
        weights[np.arange(n_out), left] += 1 - frac
        weights[np.arange(n_out), right] += frac
    return weights.astype(np.float32)


def _apply(array: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    out = np.tensordot(array, weights, axes=([axis], [1]))
    return np.moveaxis(out, -1, axis)


def resample(array: np.ndarray, shape_out: Sequence[int], window: Sequence[slice] | None = None) -> np.ndarray:
    """Resample a 3D array of any real dtype to `shape_out` (float32 result); with `window` (one
    slice per axis of the output grid, steps of 1) only that part of the output, computed alone.

    >>> resample(np.array([[[0., 2.]]]), (1, 1, 4), window=(slice(None), slice(None), slice(1, 3)))
    array([[[0.5, 1.5]]], dtype=float32)
    """
    shape_out = tuple(int(n) for n in shape_out)
    if array.shape == shape_out:
        return np.asarray(array if window is None else array[tuple(window)], dtype=np.float32).copy()
    weights = [axis_weights(n, m) for n, m in zip(array.shape, shape_out)]
    if window is not None:
        weights = [w[rows] for w, rows in zip(weights, window)]
    chunk_axis = int(np.argmax(np.abs(array.strides)))
    other = [a for a in range(3) if a != chunk_axis]
    per_slice = array.size // max(1, array.shape[chunk_axis])
    step = max(1, CHUNK_VOXELS // max(1, per_slice))
    parts = []
    for start in range(0, array.shape[chunk_axis], step):
        index = [slice(None)] * 3
        index[chunk_axis] = slice(start, start + step)
        chunk = np.ascontiguousarray(array[tuple(index)], dtype=np.float32)
        for axis in other:
            chunk = _apply(chunk, weights[axis], axis)
        parts.append(chunk)
    return np.ascontiguousarray(_apply(np.concatenate(parts, axis=chunk_axis), weights[chunk_axis], chunk_axis))


def resample_labels(labels: np.ndarray, shape_out: Sequence[int], label_values: Sequence[int]) -> np.ndarray:
    """Resample a label map by resampling each label's indicator and taking the argmax.

    Small structures survive far better than with nearest-neighbour sampling, and no label
    present in the input disappears (its best-covered voxel keeps it). The background's
    share is one minus the others', which saves a pass.
    """
    shape_out = tuple(int(n) for n in shape_out)
    best = np.zeros(shape_out, dtype=np.uint8)
    foreground_total = np.zeros(shape_out, dtype=np.float32)
    best_score = np.zeros(shape_out, dtype=np.float32)
    peaks = {}
    for value in sorted(int(v) for v in label_values if v != 0):
        score = resample(labels == value, shape_out)
        foreground_total += score
        better = score > best_score
        best[better] = value
        best_score[better] = score[better]
        if score.max() > 0:
            peaks[value] = np.unravel_index(np.argmax(score), shape_out)
    best[(1.0 - foreground_total) >= best_score] = 0
    for value, peak in peaks.items():  # a structure smaller than a voxel keeps its best voxel
        if not (best == value).any():
            best[peak] = value
    return best


def shape_at_spacing(shape: Sequence[int], spacing_mm: Sequence[float],
                     target_spacing_mm: Sequence[float]) -> tuple[int, int, int]:
    """Voxels needed to cover the same extent at the target spacing (at least 1 per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_spacing_mm))
