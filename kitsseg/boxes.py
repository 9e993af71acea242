"""Boxes around kidneys: connected components of a mask, grown by a margin, clipped to the volume.

A box is a tuple of three `slice`s in canonical `(z, y, x)` voxel coordinates.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

Box = tuple[slice, slice, slice]


def component_boxes(mask: np.ndarray, max_components: int | None = None,
                    min_voxels: int = 1) -> list[Box]:
    """Bounding boxes of the largest 26-connected components of `mask`, largest first."""
    components, count = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return []
    sizes = np.bincount(components.ravel())[1:]
    order = [i for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_voxels]
    boxes = ndi.find_objects(components)
    return [boxes[i] for i in order[:max_components]]


def coarse_component_boxes(mask: np.ndarray, spacing_mm: Sequence[float], cell_mm: float = 4.0,
                           max_components: int | None = None) -> list[Box]:
    """Component boxes of a large mask, found on a grid of about `cell_mm` cells.

    A cell is set when any voxel in it is set, so every mask voxel lies inside the
    box of its cell's component; boxes are returned in the mask's own voxel units
    (tight around the cells, not the voxels).
    """
    factors = [max(1, int(cell_mm // s)) for s in spacing_mm]
    padded = [int(np.ceil(n / f)) * f for n, f in zip(mask.shape, factors)]
    grid = np.zeros(padded, dtype=bool)
    grid[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    cells = grid.reshape(padded[0] // factors[0], factors[0], padded[1] // factors[1], factors[1],
                         padded[2] // factors[2], factors[2]).any(axis=(1, 3, 5))
    boxes = []
    for box in component_boxes(cells, max_components):
        boxes.append(tuple(slice(b.start * f, min(b.stop * f, n))
                           for b, f, n in zip(box, factors, mask.shape)))
    return [tight_box(mask, box) for box in boxes]


def tight_box(mask: np.ndarray, box: Box) -> Box:
    """Shrink `box` to the extent of the mask voxels inside it."""
    sub = mask[box]
    out = []
    for axis in range(3):
        hit = np.nonzero(sub.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        out.append(slice(box[axis].start + int(hit[0]), box[axis].start + int(hit[-1]) + 1))
    return tuple(out)


def grow_box(box: Box, margin_mm: Sequence[float], spacing_mm: Sequence[float],
             shape: Sequence[int]) -> Box:
    """Grow a box by a margin in mm per axis, clipped to the volume."""
    out = []
    for b, m, s, n in zip(box, margin_mm, spacing_mm, shape):
        pad = int(np.ceil(m / s))
        out.append(slice(max(0, b.start - pad), min(n, b.stop + pad)))
    return tuple(out)


def box_in_resampled(inner: Box, outer: Box, shape_out: Sequence[int]) -> Box:
    """The voxels of `outer` resampled to `shape_out` that cover `inner` (a box inside `outer`, both in
    the original voxels; output voxel j spans input [j, j + 1) * n_in / n_out, as in resampling.py).

    >>> box_in_resampled((slice(3, 5), slice(0, 4), slice(1, 2)), (slice(2, 6), slice(0, 4), slice(0, 4)), (8, 2, 4))
    (slice(2, 6, None), slice(0, 2, None), slice(1, 2, None))
    """
    out = []
    for i, o, n in zip(inner, outer, shape_out):
        scale = n / (o.stop - o.start)
        out.append(slice(max(0, int(np.floor((i.start - o.start) * scale + 1e-9))),
                         min(int(n), int(np.ceil((i.stop - o.start) * scale - 1e-9)))))
    return tuple(out)


def box_shape(box: Box) -> tuple[int, ...]:
    """Voxels along each axis of a box."""
    return tuple(s.stop - s.start for s in box)


def box_to_list(box: Box) -> list[list[int]]:
    """JSON form: [[start, stop], ...] per axis."""
    return [[int(b.start), int(b.stop)] for b in box]


def box_from_list(data: Sequence[Sequence[int]]) -> Box:
    return tuple(slice(int(a), int(b)) for a, b in data)
