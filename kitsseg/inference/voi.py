"""Volumes of interest: kidney components of the coarse mask, mapped to the original voxel grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kitsseg.boxes import Box, component_boxes, grow_box

MAX_KIDNEYS = 2
MIN_KIDNEY_ML = 1.0


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


def find_vois(kidney_mask: np.ndarray, coarse_spacing_mm: Sequence[float], original_shape: Sequence[int],
              original_spacing_mm: Sequence[float], margin_mm: Sequence[float],
              max_kidneys: int = MAX_KIDNEYS, min_kidney_ml: float = MIN_KIDNEY_ML) -> list[Box]:
    """Boxes (original canonical voxels) around the largest kidney components, grown by the margin."""
    voxel_ml = float(np.prod(coarse_spacing_mm)) / 1000.0
    min_voxels = max(1, int(np.ceil(min_kidney_ml / voxel_ml)))
    boxes = component_boxes(kidney_mask, max_components=max_kidneys, min_voxels=min_voxels)
    return [grow_box(coarse_box_to_original(b, kidney_mask.shape, original_shape), margin_mm,
                     original_spacing_mm, original_shape) for b in boxes]
