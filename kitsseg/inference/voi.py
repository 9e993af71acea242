"""Volumes of interest: kidney components of the coarse mask, one VOI per side of the body.

The coarse mask's 26-connected components of at least `MIN_KIDNEY_ML` are the candidates. A
component spanning the body's midline (x axis, `kidney_sides.body_midline_x`) with a real share
on each side (a horseshoe kidney, or two kidneys the coarse net joined) is cut there into one
piece per side. A piece longer than the plans' `max_kidney_extent_mm` along an axis is not a
kidney alone (it is a coarse net's false region, or a kidney joined to one): it is cut to the
window of that length holding most of its voxels, so a false region costs at most a kidney-sized
VOI and a kidney joined to one keeps its VOI (the cascade keeps any VOI's labels only if the fine
stage finds kidney tissue in it). On each
side the largest piece makes the VOI (the lowest component label among equal sizes), grown by
the margin; other pieces on that side whose grown boxes meet the VOI join it (a tumour lobe
the coarse net saw apart from its kidney), and pieces away from it are dropped (false
positives). Joined pieces longer together than `max_kidney_extent_mm` are cut as one piece (short
false pieces in a row are no kidney either). The result: at most two VOIs, the patient's right
first (x grows to the left in the canonical LPS orientation); they may overlap.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage as ndi

from kitsseg.boxes import Box, grow_box

MIN_KIDNEY_ML = 1.0
MIN_SIDE_FRACTION = 0.2  # a component is cut at the midline only when each side holds this share of it


class _Piece(NamedTuple):
    side: int
    voxels: int
    label: int  # its coarse component
    mask: np.ndarray  # on the whole coarse grid


def coarse_box_to_original(box: Box, coarse_shape: Sequence[int], original_shape: Sequence[int]) -> Box:
    """The original voxels covered by a box of coarse voxels (same extent, half-voxel convention)."""
    out = []
    for b, m, n in zip(box, coarse_shape, original_shape):
        scale = n / m
        out.append(slice(max(0, int(np.floor(b.start * scale))), min(n, int(np.ceil(b.stop * scale)))))
    return tuple(out)


def coarse_mask_in_box(kidney_mask: np.ndarray, box: Box, original_shape: Sequence[int]) -> np.ndarray:
    """The coarse mask on the original voxels of `box` (nearest coarse voxel, same convention as above)."""
    index = [np.arange(b.start, b.stop) * m // n for b, m, n in zip(box, kidney_mask.shape, original_shape)]
    return kidney_mask[np.ix_(*index)]


def _side_pieces(in_component: np.ndarray, midline_x: float) -> list[tuple[int, np.ndarray]]:
    """(side, mask) of a component: its two halves when each holds `MIN_SIDE_FRACTION`, else itself
    on the side of its centre (side 0: x below the midline, 1: above)."""
    right = (np.arange(in_component.shape[2]) + 0.5 > midline_x)[None, None, :]
    halves = [in_component & ~right, in_component & right]
    counts = [int(h.sum()) for h in halves]
    if min(counts) >= MIN_SIDE_FRACTION * sum(counts):
        return [(0, halves[0]), (1, halves[1])]
    return [(int(counts[1] > counts[0]), in_component)]


def _cut_to_extent(piece: np.ndarray, max_voxels: Sequence[int]) -> np.ndarray:
    """The piece within, along each axis longer than `max_voxels` (0: no limit), the window of that
    length that holds most of its voxels (the first among equals)."""
    for axis, limit in enumerate(max_voxels):
        if 0 < limit < piece.shape[axis]:
            profile = piece.sum(axis=tuple(a for a in range(piece.ndim) if a != axis))
            window_sums = np.convolve(profile, np.ones(limit, np.int64), "valid")
            start = int(np.argmax(window_sums))
            outside = [slice(None)] * piece.ndim
            for cut in (slice(None, start), slice(start + limit, None)):
                outside[axis] = cut
                piece[tuple(outside)] = False
    return piece


def _cut_region(region: np.ndarray, max_voxels: Sequence[int]) -> np.ndarray:
    """`_cut_to_extent` of a mask on the whole coarse grid."""
    box = _bounding_box(region)
    cut = np.zeros_like(region)
    cut[box] = _cut_to_extent(region[box].copy(), max_voxels)
    return cut


def _bounding_box(mask: np.ndarray) -> Box:
    return ndi.find_objects(mask.astype(np.uint8))[0]


def _meets(a: Box, b: Box) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


def _union(a: Box, b: Box) -> Box:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def find_vois(kidney_mask: np.ndarray, coarse_spacing_mm: Sequence[float], original_shape: Sequence[int],
              original_spacing_mm: Sequence[float], margin_mm: Sequence[float], midline_x: float | None = None,
              min_kidney_ml: float = MIN_KIDNEY_ML, max_extent_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> list[Box]:
    """VOI boxes (original canonical voxels), one per side of `midline_x` (coarse voxel-edge units,
    default the scan's centre) that holds a kidney piece, grown by the margin (module docstring)."""
    midline_x = kidney_mask.shape[2] / 2 if midline_x is None else midline_x
    min_voxels = max(1, int(np.ceil(min_kidney_ml / (float(np.prod(coarse_spacing_mm)) / 1000.0))))
    max_voxels = [int(np.ceil(m / s)) for m, s in zip(max_extent_mm, coarse_spacing_mm)]

    def grown(piece: np.ndarray) -> Box:
        original = coarse_box_to_original(_bounding_box(piece), kidney_mask.shape, original_shape)
        return grow_box(original, margin_mm, original_spacing_mm, original_shape)

    components, count = ndi.label(kidney_mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    pieces = []
    for label, box in enumerate(ndi.find_objects(components), 1):
        if sizes[label] < min_voxels:
            continue
        for side, piece in _side_pieces(components[box] == label, midline_x - box[2].start):
            whole = np.zeros(kidney_mask.shape, bool)
            whole[box] = piece
            whole = _cut_region(whole, max_voxels)
            pieces.append(_Piece(side, int(whole.sum()), label, whole))
    vois = []
    for side in (0, 1):
        ordered = sorted((p for p in pieces if p.side == side), key=lambda p: (-p.voxels, p.label))
        if not ordered:
            continue
        voi, region = grown(ordered[0].mask), ordered[0].mask
        rest = [(grown(p.mask), p.mask) for p in ordered[1:]]
        while joining := [(b, m) for b, m in rest if _meets(voi, b)]:
            rest = [(b, m) for b, m in rest if not _meets(voi, b)]
            for b, m in joining:
                voi, region = _union(voi, b), region | m
        vois.append(grown(_cut_region(region, max_voxels)))  # the joined boxes' union when nothing is cut
    return vois
