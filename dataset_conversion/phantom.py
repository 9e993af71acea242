"""A procedural abdominal CT phantom with kidneys, tumours and cysts, written in the raw format.

Each case is an axial stack (anisotropic: 0.7-0.9 mm in-plane, 1.5-2.5 mm slices by
default): a torso with skin, subcutaneous fat, muscle wall and visceral fat, a
vertebra, two kidneys with enhancing cortex, tumours of varied size and contrast,
and sometimes cysts, blurred and noisy. Anatomy scales with the field of view, so
any `shape` works. Deterministic per (seed, case index).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from tqdm import tqdm

from kitsseg.dataset import kits_dataset_info
from kitsseg.io import write_image

KIDNEY, TUMOR, CYST = 1, 2, 3


@dataclass(frozen=True)
class PhantomConfig:
    """Size and appearance ranges of generated cases."""

    shape: tuple[int, int, int] = (64, 128, 128)  # (z, y, x) voxels
    inplane_spacing_mm: tuple[float, float] = (0.7, 0.9)
    slice_spacing_mm: tuple[float, float] = (1.5, 2.5)
    tumor_probability: float = 0.9
    cyst_probability: float = 0.4
    noise_hu: float = 12.0


def _ellipsoid(grid, center, semi_axes, rotation=np.eye(3)) -> np.ndarray:
    """Normalised radius (1 on the surface) of an ellipsoid over a physical grid (mm)."""
    offsets = [g - c for g, c in zip(grid, center)]
    local = [sum(rotation[i, j] * offsets[j] for j in range(3)) for i in range(3)]
    return np.sqrt(sum((l / a) ** 2 for l, a in zip(local, semi_axes)))


def _rotation_zx(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def _sphere_on_surface(rng, center, semi_axes, rotation, depth: float):
    """A point at relative `depth` (1 = surface) along a random direction of an ellipsoid."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return np.asarray(center) + rotation.T @ (direction * np.asarray(semi_axes) * depth)


def generate_case(rng: np.random.Generator, config: PhantomConfig = PhantomConfig()):
    """Return (image int16 HU, labels uint8, spacing_mm) as canonical `(z, y, x)` arrays."""
    nz, ny, nx = config.shape
    inplane = rng.uniform(*config.inplane_spacing_mm)
    spacing = (float(rng.uniform(*config.slice_spacing_mm)), inplane, inplane)
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(config.shape, spacing)],
                       indexing="ij", sparse=True)
    z, y, x = grid
    fov_y, fov_x = ny * inplane, nx * inplane
    ry, rx = 0.40 * fov_y * rng.uniform(0.9, 1.05), 0.46 * fov_x * rng.uniform(0.9, 1.05)
    torso = np.broadcast_to((y / ry) ** 2 + (x / rx) ** 2, config.shape)

    image = np.full(config.shape, -1000.0, dtype=np.float32)  # air
    image[torso <= 1.0] = -100.0  # subcutaneous fat
    image[torso <= 0.92] = 50.0  # muscle wall
    image[torso <= 0.85] = 35.0  # viscera
    fat = ndi.gaussian_filter(rng.normal(size=config.shape).astype(np.float32), 4) > 0.04
    image[(torso <= 0.85) & fat] = -90.0  # visceral fat
    spine_center = (0.0, 0.55 * ry, 0.0)
    spine = _ellipsoid(grid, spine_center, (1e6, 0.16 * rx, 0.16 * rx))
    image[spine <= 1.0] = 250.0
    image[(spine <= 1.0) & (spine > 0.8)] = 700.0

    labels = np.zeros(config.shape, dtype=np.uint8)
    kidney_semi = np.array([0.42, 0.24, 0.21]) * rx * rng.uniform(0.85, 1.15, size=3)
    kidneys = []
    for side in (-1, 1):
        center = (rng.uniform(-0.1, 0.1) * nz * spacing[0], 0.30 * ry, side * 0.50 * rx)
        rotation = _rotation_zx(side * np.deg2rad(rng.uniform(5, 20)))
        r = _ellipsoid(grid, center, kidney_semi, rotation)
        labels[r <= 1.0] = KIDNEY
        image[r <= 1.0] = rng.uniform(90, 130)  # medulla
        image[(r <= 1.0) & (r > 0.75)] = rng.uniform(160, 220)  # enhancing cortex
        kidneys.append((center, rotation))

    if rng.random() < config.tumor_probability:
        for _ in range(rng.integers(1, 3)):
            center, rotation = kidneys[rng.integers(2)]
            radius = rng.uniform(0.3, 0.7) * kidney_semi[1:].mean() * 2
            t_center = _sphere_on_surface(rng, center, kidney_semi, rotation, rng.uniform(0.3, 0.9))
            r = _ellipsoid(grid, t_center, (radius,) * 3)
            tumor_hu = rng.uniform(40, 110)
            texture = ndi.gaussian_filter(rng.normal(size=config.shape).astype(np.float32), 1.5)
            image[r <= 1.0] = tumor_hu + 60 * texture[r <= 1.0]
            labels[r <= 1.0] = TUMOR
    if rng.random() < config.cyst_probability:
        center, rotation = kidneys[rng.integers(2)]
        radius = rng.uniform(0.15, 0.35) * kidney_semi[1:].mean() * 2
        c_center = _sphere_on_surface(rng, center, kidney_semi, rotation, rng.uniform(0.5, 0.9))
        r = _ellipsoid(grid, c_center, (radius,) * 3)
        cyst = (r <= 1.0) & (labels != TUMOR)
        image[cyst] = rng.uniform(0, 15)
        labels[cyst] = CYST

    image = ndi.gaussian_filter(image, sigma=[0.3, 0.6, 0.6])
    image += rng.normal(scale=config.noise_hu, size=config.shape).astype(np.float32)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), labels, spacing


def _to_image(array: np.ndarray, spacing_zyx, origin_xyz) -> sitk.Image:
    image = sitk.GetImageFromArray(array)  # identity direction: canonical == raw order
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(origin_xyz)
    return image


def write_phantom_dataset(raw_dir: Path, n_cases: int, seed: int = 0,
                          config: PhantomConfig = PhantomConfig(), quiet: bool = False) -> list[str]:
    """Generate `n_cases` phantom cases into `raw_dir`; return their ids."""
    case_ids, label_values = [], set()
    for index in tqdm(range(n_cases), desc="phantom", disable=quiet):
        rng = np.random.default_rng([seed, index])
        image, labels, spacing = generate_case(rng, config)
        origin = tuple(float(v) for v in rng.uniform(-200, 200, size=3))
        case_id = f"case_{index:05d}"
        write_image(_to_image(image, spacing, origin), raw_dir / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_image(_to_image(labels, spacing, origin), raw_dir / "labelsTr" / f"{case_id}.nii.gz")
        label_values |= set(np.unique(labels).tolist())
        case_ids.append(case_id)
    kits_dataset_info(label_values, n_cases).save(raw_dir / "dataset.json")
    return case_ids
