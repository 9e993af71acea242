"""Reading and writing volumes; the only module that touches SimpleITK's x-y-z order.

Every volume is brought to one canonical orientation at load: numpy arrays are
`(z, y, x)` with axis 0 pointing superior, axis 1 posterior and axis 2 patient-left
(LPS, ITK's physical frame), spacings are `(z, y, x)` in mm. The original geometry
is kept in `CaseProperties` and restored exactly when a label map is written back.
"""
from __future__ import annotations

import gzip
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
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    perm, flips = [0, 0, 0], [False, False, False]
    for a in range(3):  # image axis a is numpy axis 2 - a
        p = int(np.argmax(np.abs(d[:, a])))
        perm[2 - p], flips[2 - p] = 2 - a, bool(d[p, a] < 0)
    if sorted(perm) != [0, 1, 2]:
        raise ValueError(f"direction {tuple(direction)} is not close to axis-aligned")
    return tuple(perm), tuple(flips)


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


def load_volume(path: Path | str, dtype=None) -> tuple[np.ndarray, CaseProperties]:
    """Read a volume as a canonical `(z, y, x)` array plus its original geometry.

    With `dtype` None the array keeps the file's type and is a read-only (possibly
    strided) view of the image buffer, so a large CT is never copied; otherwise it is
    a contiguous array of `dtype`.
    """
    image = read_image(path)
    props = CaseProperties.from_image(image)
    try:
        props.axes
    except ValueError as exc:
        raise KitssegError(f"{path}: {exc}") from None
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
