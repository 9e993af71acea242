"""Reading and writing volumes; the only module that touches SimpleITK's x-y-z order.

Every volume is brought to one canonical orientation at load: numpy arrays are
`(z, y, x)` with axis 0 pointing superior, axis 1 posterior and axis 2 patient-left
(LPS, ITK's physical frame), spacings are `(z, y, x)` in mm. The original geometry
is kept in `CaseProperties` and restored exactly when a label map is written back.

Each image axis is read as the physical axis nearest to it. An image more than
`OBLIQUE_LIMIT_DEG` from the axes is oblique: the cascade sees it resampled onto the
nearest axis-aligned grid (`align_to_axes`) and its labels return to the input's own grid
by nearest neighbour (`labels_onto`).
"""
from __future__ import annotations

import gzip
import itertools
import re
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kitsseg.atomic import atomic_path
from kitsseg.errors import KitssegError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (positive, negative) per physical axis
# beyond this angle between an image axis and the physical axis it is read as, the cascade resamples
# the image onto the axes (training rotates its crops by up to 15 degrees, so closer images are left be)
OBLIQUE_LIMIT_DEG = 15.0


@dataclass(frozen=True)
class CaseProperties:
    """Original geometry of a volume, in SimpleITK's (x, y, z) order, JSON-serialisable."""

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are the image axes

    @classmethod
    def from_image(cls, image: sitk.Image) -> "CaseProperties":
        return cls(tuple(int(v) for v in image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @classmethod
    def from_dict(cls, data: dict) -> "CaseProperties":
        return cls(**{k: tuple(v) for k, v in data.items()})

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def axes(self) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """(permutation, flips) bringing the raw `(k, j, i)` array to canonical `(z, y, x)`."""
        return canonical_axes(self.direction)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Spacing of the canonical array, `(z, y, x)` in mm."""
        perm, _ = self.axes
        raw = self.spacing_xyz[::-1]
        return tuple(float(raw[p]) for p in perm)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array, `(z, y, x)`."""
        perm, _ = self.axes
        raw = self.size_xyz[::-1]
        return tuple(int(raw[p]) for p in perm)

    @property
    def orientation(self) -> str:
        """Where each image axis (x, y, z) points, e.g. 'LPS' for the identity direction."""
        d = np.asarray(self.direction).reshape(3, 3)
        letters = []
        for a in range(3):
            p = int(np.argmax(np.abs(d[:, a])))
            letters.append(_AXIS_LETTERS[p][0 if d[p, a] > 0 else 1])
        return "".join(letters)


def canonical_axes(direction) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Numpy-axis permutation and flips from a raw array to canonical (S, P, L) order.

    >>> canonical_axes((1, 0, 0, 0, 1, 0, 0, 0, 1))
    ((0, 1, 2), (False, False, False))
    >>> canonical_axes((0, 0, 1, 0, 1, 0, -1, 0, 0))  # KiTS19: slice axis first
    ((2, 1, 0), (True, False, False))
    """
    nearest = nearest_axes(direction)
    perm, flips = [0, 0, 0], [False, False, False]
    for a in range(3):  # image axis a is numpy axis 2 - a
        p = int(np.argmax(np.abs(nearest[:, a])))
        perm[2 - p], flips[2 - p] = 2 - a, bool(nearest[p, a] < 0)
    return tuple(perm), tuple(flips)


def nearest_axes(direction) -> np.ndarray:
    """The signed permutation matrix nearest to a direction: each image axis (column) becomes the
    physical axis, with its sign, that the assignment of all three axes brings closest (ties: the
    first permutation in order).

    >>> nearest_axes((0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)).astype(int).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
    nearest = np.zeros((3, 3))
    for a, p in enumerate(best):
        nearest[p, a] = -1.0 if d[p, a] < 0 else 1.0
    return nearest


def obliquity_deg(direction) -> float:
    """The largest angle (degrees) between an image axis and the physical axis it is read as.

    >>> round(obliquity_deg((0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)), 2)  # 36.87 degrees about z
    36.87
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    cosines = np.abs((d * nearest_axes(direction)).sum(axis=0))
    return float(np.degrees(np.arccos(np.clip(cosines.min(), 0.0, 1.0))))


def is_oblique(props: CaseProperties) -> bool:
    return obliquity_deg(props.direction) > OBLIQUE_LIMIT_DEG


def axis_aligned_grid(props: CaseProperties) -> CaseProperties:
    """The grid with the nearest axis-aligned direction that covers an image: each axis keeps the
    spacing of the image axis read as it, and spans the image's voxel centres."""
    direction = np.asarray(props.direction, dtype=float).reshape(3, 3)
    nearest = nearest_axes(props.direction)
    spacing = np.asarray(props.spacing_xyz, dtype=float)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in props.size_xyz])), dtype=float)
    physical = np.asarray(props.origin_xyz) + (corners * spacing) @ direction.T
    along = physical @ nearest  # coordinates along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    size = np.ceil((high - low) / spacing - 1e-6).astype(int) + 1
    return CaseProperties(tuple(int(n) for n in size), tuple(float(s) for s in spacing),
                          tuple(float(v) for v in nearest @ low), tuple(float(v) for v in nearest.ravel()))


def resample_onto(image: sitk.Image, grid: CaseProperties, labels: bool) -> sitk.Image:
    """`image` on `grid` (same physical space): nearest neighbour and 0 outside for `labels`, else
    linear, with the image's minimum (air, or the scanner's outside) outside the image."""
    fill = 0.0
    if not labels:
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(image)
        fill = extremes.GetMinimum()
    return sitk.Resample(image, list(grid.size_xyz), sitk.Transform(),
                         sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, list(grid.origin_xyz),
                         list(grid.spacing_xyz), list(grid.direction), fill, image.GetPixelID())


def align_to_axes(image: sitk.Image) -> sitk.Image:
    """An oblique image (`is_oblique`) resampled onto `axis_aligned_grid`; any other image as it is."""
    props = CaseProperties.from_image(image)
    return resample_onto(image, axis_aligned_grid(props), labels=False) if is_oblique(props) else image


def labels_onto(labels: np.ndarray, grid: CaseProperties, target: CaseProperties) -> np.ndarray:
    """A canonical label map on `grid` -> the canonical label map on `target`'s grid (nearest neighbour)."""
    image = resample_onto(to_sitk(labels, grid), target, labels=True)
    return np.ascontiguousarray(to_canonical(_array_view(image), target))  # the view keeps `image` alive


def to_canonical(raw: np.ndarray, props: CaseProperties) -> np.ndarray:
    """Raw SimpleITK array `(k, j, i)` -> canonical `(z, y, x)` array (a view where possible)."""
    perm, flips = props.axes
    out = np.transpose(raw, perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def from_canonical(array: np.ndarray, props: CaseProperties) -> np.ndarray:
    """Inverse of `to_canonical`."""
    perm, flips = props.axes
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
    return np.ascontiguousarray(np.transpose(array, np.argsort(perm)))


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file needs (header offset + voxel data), or None if not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[12:14])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = max(1, min(int(dims[0]), 7))
    n_voxels = int(np.prod([max(1, int(v)) for v in dims[1:1 + n_dims]], dtype=np.int64))
    return max(offset, 352) + n_voxels * bitpix // 8


def _gunzipped_size(path: Path) -> int:
    """Uncompressed size of all gzip members of a file together (decompresses it once)."""
    size = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            size += len(chunk)
    return size


def check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file is shorter than its header says (SimpleITK zero-fills silently).

    For `.nii.gz` the gzip trailer's uncompressed size (modulo 2**32) is compared with
    the size the header implies, which costs two small reads. The trailer counts only the
    last gzip member, so on a mismatch (a multi-member file, or a damaged one) the whole
    file is decompressed and counted.
    """
    if path.name.endswith(".nii.gz"):
        try:
            with gzip.open(path, "rb") as f:
                header = f.read(540)
        except (OSError, EOFError) as exc:
            raise KitssegError(f"{path}: not a readable gzip file ({exc})") from None
        with open(path, "rb") as f:
            f.seek(-4, 2)
            stored = struct.unpack("<I", f.read(4))[0]
        expected = _nifti_expected_bytes(header)
        if expected is None:
            raise KitssegError(f"{path}: not a NIfTI file (bad header)")
        if stored == expected % 2**32:
            return
        try:
            size = _gunzipped_size(path)
        except (OSError, EOFError, zlib.error) as exc:
            raise KitssegError(f"{path}: truncated or corrupt .nii.gz ({exc})") from None
        if size < expected:
            raise KitssegError(f"{path}: truncated .nii.gz (header implies {expected} bytes, "
                               f"it holds {size})")
    elif path.suffix == ".nii":
        with open(path, "rb") as f:
            expected = _nifti_expected_bytes(f.read(540))
        if expected is None:
            raise KitssegError(f"{path}: not a NIfTI file (bad header)")
        if path.stat().st_size < expected:
            raise KitssegError(f"{path}: truncated .nii (header implies {expected} bytes, "
                               f"file has {path.stat().st_size})")


def _dicom_series_files(folder: Path) -> list[str]:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise KitssegError(f"{folder}: folder holds no DICOM series")
    files = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series]
    return list(max(files, key=len))


def read_image(path: Path | str, header_only: bool = False) -> sitk.Image | sitk.ImageFileReader:
    """Read a 3D volume (NIfTI, NRRD, MHA/MHD file, or DICOM series folder), checked.

    With `header_only` (files only), return a reader whose information is loaded but
    no voxels.
    Raises `KitssegError` naming the file for missing, empty, truncated, unreadable,
    or non-3D inputs.
    """
    path = Path(path)
    if not path.exists():
        raise KitssegError(f"{path}: file not found")
    if path.is_dir():
        files = _dicom_series_files(path)
    else:
        if path.stat().st_size == 0:
            raise KitssegError(f"{path}: file is empty")
        check_nifti_complete(path)
        files = [str(path)]
    try:
        if header_only and len(files) == 1:
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            dimension, size = reader.GetDimension(), reader.GetSize()
            result = reader
        else:
            result = sitk.ReadImage(files if len(files) > 1 else files[0])
            dimension, size = result.GetDimension(), result.GetSize()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise KitssegError(f"{path}: cannot read image ({reason})") from None
    if dimension != 3:
        raise KitssegError(f"{path}: expected a 3D image, got {dimension}D of size {tuple(size)}")
    components = (result.GetNumberOfComponents() if header_only and len(files) == 1
                  else result.GetNumberOfComponentsPerPixel())
    if components != 1:
        raise KitssegError(f"{path}: expected a scalar image, got {components} components per voxel")
    return result


def read_header(path: Path | str) -> tuple[CaseProperties, int]:
    """Geometry and bytes per voxel of a volume without reading its voxels (DICOM series are read whole)."""
    path = Path(path)
    if path.is_dir():
        image = read_image(path)
        props, pixel_id, components = CaseProperties.from_image(image), image.GetPixelID(), 1
    else:
        reader = read_image(path, header_only=True)
        props = CaseProperties(tuple(int(v) for v in reader.GetSize()), tuple(reader.GetSpacing()),
                               tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
        pixel_id, components = reader.GetPixelID(), reader.GetNumberOfComponents()
    itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).itemsize
    return props, itemsize * max(1, components)


def read_properties(path: Path | str) -> CaseProperties:
    """Geometry of a volume without reading its voxels (DICOM series are read whole)."""
    return read_header(path)[0]


class _ImageBacked(np.ndarray):
    """A numpy view of a SimpleITK image's buffer that keeps the image alive."""

    _image: sitk.Image


def _array_view(image: sitk.Image) -> np.ndarray:
    view = sitk.GetArrayViewFromImage(image).view(_ImageBacked)
    view._image = image  # views of this view reach it through .base
    return view


def load_volume(path: Path | str, dtype=None, aligned: bool = False) -> tuple[np.ndarray, CaseProperties]:
    """Read a volume as a canonical `(z, y, x)` array plus its original geometry.

    With `dtype` None the array keeps the file's type and is a read-only (possibly
    strided) view of the image buffer, so a large CT is never copied; otherwise it is
    a contiguous array of `dtype`. With `aligned`, an oblique image is resampled onto the
    axes first (`align_to_axes`) and the geometry returned is that grid's.
    """
    image = read_image(path)
    if aligned:
        image = align_to_axes(image)
    props = CaseProperties.from_image(image)
    array = to_canonical(_array_view(image), props)
    if dtype is not None:
        return np.ascontiguousarray(array, dtype=dtype), props
    return array, props


def to_sitk(array: np.ndarray, props: CaseProperties) -> sitk.Image:
    """Canonical `(z, y, x)` array -> SimpleITK image with the original geometry, exactly."""
    raw = from_canonical(array, props)
    if raw.shape != tuple(props.size_xyz[::-1]):
        raise ValueError(f"array shape {array.shape} does not match the case's shape {props.shape}")
    image = sitk.GetImageFromArray(raw)
    image.SetSpacing(props.spacing_xyz)
    image.SetOrigin(props.origin_xyz)
    image.SetDirection(props.direction)
    return image


def write_image(image: sitk.Image, path: Path | str, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def save_label_map(labels: np.ndarray, props: CaseProperties, path: Path | str) -> None:
    """Write a canonical uint8 label map with the original geometry, atomically."""
    write_image(to_sitk(labels.astype(np.uint8, copy=False), props), path)


def strip_image_suffix(name: str) -> str:
    """'case_00001_0000.nii.gz' -> 'case_00001_0000' (known image suffixes only)."""
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_id_of(path: Path) -> str:
    """'case_00002_0000.nii.gz' -> 'case_00002' (channel suffix stripped); a folder keeps its name."""
    return re.sub(r"_0000$", "", strip_image_suffix(path.name)) if path.is_file() else path.name
