"""Kidney regions of a ground-truth label map: one box per kidney covering every foreground voxel."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kitsseg.boxes import Box, coarse_component_boxes

LARGE_COMPONENT_FRACTION = 0.1


def _union(a: Box, b: Box) -> Box:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _centre(box: Box) -> np.ndarray:
    return np.array([(b.start + b.stop) / 2 for b in box])


def kidney_boxes(foreground: np.ndarray, spacing_mm: Sequence[float]) -> list[Box]:
    """Boxes of the kidneys in a foreground mask, ordered along x (patient right first).

    Components with at least 10% of the largest one's bounding volume are kidneys; every
    smaller fragment is merged into the nearest kidney's box, so together the boxes
    cover every foreground voxel.
    """
    boxes = coarse_component_boxes(foreground, spacing_mm)
    if not boxes:
        return []
    volumes = [np.prod([b.stop - b.start for b in box]) for box in boxes]
    large = [box for box, v in zip(boxes, volumes) if v >= LARGE_COMPONENT_FRACTION * max(volumes)]
    small = [box for box, v in zip(boxes, volumes) if v < LARGE_COMPONENT_FRACTION * max(volumes)]
    scale = np.asarray(spacing_mm)
    for fragment in small:
        distances = [np.linalg.norm((_centre(fragment) - _centre(k)) * scale) for k in large]
        nearest = int(np.argmin(distances))
        large[nearest] = _union(large[nearest], fragment)
    return sorted(large, key=lambda box: box[2].start)
