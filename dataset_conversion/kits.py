"""Official KiTS19 / KiTS21 / KiTS23 layout -> raw format.

Source: `SRC/case_XXXXX/{imaging,segmentation}.nii.gz` (KiTS19 may keep them
under `SRC/data/`), optional `kits.json`. Label 3 (cyst) appears in KiTS21/23.
Files are copied byte for byte, so geometry and voxel values stay exactly the source's.
Cases with an image and no segmentation (KiTS19's test cases 210-299) go to `imagesTs/`,
nnU-Net's place for test images.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kitsseg.atomic import atomic_path
from kitsseg.dataset import check_case_id, check_geometry, kits_dataset_info
from kitsseg.errors import KitssegError
from kitsseg.io import load_volume, read_properties


def _case_folders(src: Path) -> list[Path]:
    base = src / "data" if (src / "data").is_dir() and not list(src.glob("case_*")) else src
    folders = sorted(p for p in base.glob("case_*") if p.is_dir())
    if not folders:
        raise KitssegError(f"{src}: no case_XXXXX folders found")
    return folders


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


@dataclass
class Conversion:
    """Case ids converted for training (image + label), as test images (image only), and failed."""

    training: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _convert_test_case(folder: Path, raw_dir: Path) -> None:
    """Check that the image reads, then copy it to imagesTs."""
    case_id = check_case_id(folder.name)
    read_properties(folder / "imaging.nii.gz")
    _copy(folder / "imaging.nii.gz", raw_dir / "imagesTs" / f"{case_id}_0000.nii.gz")


def _convert_case(folder: Path, raw_dir: Path) -> set[int]:
    """Check and copy one training case; return its label values."""
    case_id = check_case_id(folder.name)
    image, label = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    check_geometry(case_id, read_properties(image), read_properties(label))
    labels, _ = load_volume(label, np.int32)
    found = set(np.unique(labels).tolist())
    if not found <= {0, 1, 2, 3}:
        raise KitssegError(f"{label}: unexpected label values {sorted(found - {0, 1, 2, 3})}")
    _copy(image, raw_dir / "imagesTr" / f"{case_id}_0000.nii.gz")
    _copy(label, raw_dir / "labelsTr" / f"{case_id}.nii.gz")
    return found


def convert_kits(src: Path, raw_dir: Path, quiet: bool = False) -> Conversion:
    """Convert a KiTS folder into `raw_dir`: labelled cases to imagesTr/labelsTr, the others to imagesTs.

    A case without `imaging.nii.gz` is skipped with a warning; a bad case (unreadable,
    truncated, geometry mismatch, unknown labels) is reported on stderr and the others go on.
    """
    src = Path(src)
    label_values: set[int] = set()
    result = Conversion()
    for folder in tqdm(_case_folders(src), desc="convert", disable=quiet):
        if not (folder / "imaging.nii.gz").exists():
            warnings.warn(f"{folder}: no imaging.nii.gz, case skipped")
            continue
        try:
            if (folder / "segmentation.nii.gz").exists():
                label_values |= _convert_case(folder, raw_dir)
                result.training.append(folder.name)
            else:
                _convert_test_case(folder, raw_dir)
                result.test.append(folder.name)
        except KitssegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            result.failed.append(folder.name)
    if not result.training:
        raise KitssegError(f"{src}: no labelled case could be converted")
    for meta in (src / "kits.json", src / "data" / "kits.json"):
        if meta.exists():
            _copy(meta, raw_dir / "kits.json")
            break
    kits_dataset_info(label_values, len(result.training)).save(raw_dir / "dataset.json")
    return result
