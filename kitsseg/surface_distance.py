"""Surface Dice and robust Hausdorff distance with area-weighted surface elements.

The method of Nikolov et al. 2018 ("Deep learning to achieve clinically applicable segmentation of head
and neck anatomy for radiotherapy"), which the official KiTS21/23 scorers run through DeepMind's
`surface-distance` package; this is an independent implementation of it.

Surface points sit on the voxel corners: each corner gets an 8-bit code from the 2x2x2 voxels around it,
and a corner whose voxels are neither all inside nor all outside is a surface element ("surfel"). Its
area is that of the marching-cubes triangles of its code (the triangulation of the side with fewer inside
voxels, so a code and its complement have the same area), scaled to the spacing. Distances (mm) are from
each surfel of one mask to the nearest surfel of the other (Euclidean distance transform on the corner
grid). Surface Dice = area within the tolerance of the other surface over the total area of both; the
robust Hausdorff distance is the larger of the two directed area-weighted percentiles.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

# Bit of each voxel of a corner's 2x2x2 neighbourhood, indexed by its offset (axis 0, 1, 2); the voxel
# at offset (0, 0, 0) is the most significant bit (the neighbour-code order of surface-distance).
CORNER_BITS = 1 << (7 - np.arange(8)).reshape(2, 2, 2)


@lru_cache(maxsize=1)
def _unit_triangle_normals() -> tuple[np.ndarray, np.ndarray]:
    """(code of each triangle, its normal with length = area) at 1 mm spacing, for all 256 codes."""
    from skimage.measure import marching_cubes  # slow to import, needed once

    codes, normals = [], []
    for code in range(1, 255):
        side = code if bin(code).count("1") <= 4 else 255 - code  # the minority side: complement-symmetric
        cube = ((side & CORNER_BITS) > 0).astype(np.float64)
        vertices, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen")
        triangles = vertices.astype(np.float64)[faces]
        normals.append(0.5 * np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]))
        codes.append(np.full(len(faces), code))
    return np.concatenate(codes), np.concatenate(normals)


def surfel_area_table(spacing_mm: Sequence[float]) -> np.ndarray:
    """Surface area (mm²) of each of the 256 neighbour codes at this spacing (0 for codes 0 and 255)."""
    s0, s1, s2 = (float(s) for s in spacing_mm)
    codes, normals = _unit_triangle_normals()
    # scaling the axes by s scales a triangle's normal (cross product) by (s1*s2, s0*s2, s0*s1)
    areas = np.linalg.norm(normals * np.array([s1 * s2, s0 * s2, s0 * s1]), axis=1)
    return np.bincount(codes, weights=areas, minlength=256)


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every voxel corner, outside included: shape `mask.shape + 1` (uint8)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    n0, n1, n2 = (n + 1 for n in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for (i, j, k), bit in np.ndenumerate(CORNER_BITS):
        codes |= padded[i:i + n0, j:j + n1, k:k + n2] * np.uint8(bit)
    return codes


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union (the distances do not change)."""
    union, box = a | b, []
    for axis in range(3):
        present = np.nonzero(union.any(axis=tuple(j for j in range(3) if j != axis)))[0]
        box.append(slice(present[0], present[-1] + 1))
    return a[tuple(box)], b[tuple(box)]


def surface_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, np.ndarray]:
    """Surfels of two non-empty 3-D masks: their areas (mm²) and distances (mm) to the other surface.

    Returns `distances_a`, `areas_a` (surfels of `mask_a`, distances to the surface of `mask_b`) and
    `distances_b`, `areas_b`, each sorted by distance.
    """
    if not mask_a.any() or not mask_b.any():
        raise ValueError("surface distances need two non-empty masks")
    mask_a, mask_b = _crop_to_union(mask_a.astype(bool), mask_b.astype(bool))
    table = surfel_area_table(spacing_mm)
    codes_a, codes_b = neighbour_codes(mask_a), neighbour_codes(mask_b)
    border_a = (codes_a != 0) & (codes_a != 255)
    border_b = (codes_b != 0) & (codes_b != 255)
    out = {}
    for name, codes, border, other in (("a", codes_a, border_a, border_b), ("b", codes_b, border_b, border_a)):
        distances = ndi.distance_transform_edt(~other, sampling=spacing_mm)[border]
        areas = table[codes[border]]
        order = np.lexsort((areas, distances))  # by distance, ties by area
        out[f"distances_{name}"], out[f"areas_{name}"] = distances[order], areas[order]
    return out


def surface_dice(surfaces: dict[str, np.ndarray], tolerance_mm: float) -> float:
    """Share of the surface area of both masks within `tolerance_mm` of the other surface."""
    near = sum(surfaces[f"areas_{n}"][surfaces[f"distances_{n}"] <= tolerance_mm].sum() for n in "ab")
    return float(near / (surfaces["areas_a"].sum() + surfaces["areas_b"].sum()))


def robust_hausdorff(surfaces: dict[str, np.ndarray], percent: float = 95.0) -> float:
    """Larger of the two directed distances below which `percent` % of the surface area lies."""
    directed = []
    for n in "ab":
        distances, areas = surfaces[f"distances_{n}"], surfaces[f"areas_{n}"]
        cumulative = np.cumsum(areas) / np.sum(areas)
        directed.append(distances[min(int(np.searchsorted(cumulative, percent / 100.0)), len(distances) - 1)])
    return float(max(directed))
