"""The raw dataset format (nnU-Net v2's): dataset.json, imagesTr/<case>_0000<ext>, labelsTr/<case><ext>."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitsseg.atomic import write_json
from kitsseg.errors import KitssegError
from kitsseg.io import CaseProperties, load_volume, read_properties
from kitsseg.label_stats import label_histogram
from kitsseg.labels import class_map_from_labels, label_file_values

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SPACING_RELATIVE_TOLERANCE = 1e-3
POSITION_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class DatasetInfo:
    """The parts of dataset.json the pipeline uses."""

    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    num_training: int
    file_ending: str

    @classmethod
    def load(cls, path: Path) -> "DatasetInfo":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KitssegError(f"{path}: dataset.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KitssegError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise KitssegError(f"{path}: expected a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise KitssegError(f"{path}: missing key(s) {', '.join(missing)}")
        labels = data["labels"]
        class_map_from_labels(labels, str(path))  # one clear line for label sets the cascade cannot learn
        if not isinstance(data["numTraining"], int) or not isinstance(data["file_ending"], str):
            raise KitssegError(f"{path}: 'numTraining' must be an integer and 'file_ending' a string")
        return cls(dict(data["channel_names"]), dict(labels), data["numTraining"], data["file_ending"])

    def to_dict(self) -> dict:
        return {"channel_names": self.channel_names, "labels": self.labels,
                "numTraining": self.num_training, "file_ending": self.file_ending}

    def save(self, path: Path) -> None:
        write_json(self.to_dict(), path)

    @property
    def label_values(self) -> set[int]:
        return label_file_values(self.labels)


@dataclass(frozen=True)
class RawCase:
    """One training case of a raw dataset."""

    case_id: str
    image: Path
    label: Path


def kits_dataset_info(label_values: set[int], num_training: int) -> DatasetInfo:
    """dataset.json for a KiTS dataset: background/kidney/tumor, and cyst when present."""
    names = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    labels = {n: v for n, v in names.items() if v <= 2 or v in label_values}
    return DatasetInfo({"0": "CT"}, labels, num_training, ".nii.gz")


def check_case_id(case_id: str) -> str:
    """Reject ids that could escape a folder or break file names."""
    if not CASE_ID_PATTERN.match(case_id) or ".." in case_id:
        raise KitssegError(f"case id {case_id!r}: only letters, digits, '_', '-' and '.' are allowed")
    return case_id


def list_cases(raw_dir: Path) -> tuple[DatasetInfo, list[RawCase]]:
    """Read dataset.json and list the cases that have an image, sorted by id.

    Raises for a case whose image or label file is missing.
    """
    info = DatasetInfo.load(raw_dir / "dataset.json")
    ending = info.file_ending
    images_dir, labels_dir = raw_dir / "imagesTr", raw_dir / "labelsTr"
    if not images_dir.is_dir():
        raise KitssegError(f"{images_dir}: folder not found")
    cases = []
    for image in sorted(images_dir.glob(f"*_0000{ending}")):
        case_id = check_case_id(image.name[: -len(f"_0000{ending}")])
        label = labels_dir / f"{case_id}{ending}"
        if not label.exists():
            raise KitssegError(f"{label}: label file missing for case {case_id}")
        cases.append(RawCase(case_id, image, label))
    image_ids = {c.case_id for c in cases}
    for label in sorted(labels_dir.glob(f"*{ending}")) if labels_dir.is_dir() else []:
        case_id = label.name[: -len(ending)]
        if case_id not in image_ids:
            raise KitssegError(f"{images_dir / (case_id + '_0000' + ending)}: image missing for case {case_id}")
    if not cases:
        raise KitssegError(f"{images_dir}: no images named <case>_0000{ending}")
    return info, cases


def check_geometry(case_id: str, image: CaseProperties, label: CaseProperties) -> None:
    """Raise unless image and label share size, spacing (1e-3 relative), origin and direction."""
    problems = []
    if image.size_xyz != label.size_xyz:
        problems.append(f"size {image.size_xyz} vs {label.size_xyz}")
    if not np.allclose(image.spacing_xyz, label.spacing_xyz, rtol=SPACING_RELATIVE_TOLERANCE, atol=0):
        problems.append(f"spacing {image.spacing_xyz} vs {label.spacing_xyz}")
    if not np.allclose(image.origin_xyz, label.origin_xyz, rtol=0, atol=POSITION_TOLERANCE_MM):
        problems.append(f"origin {image.origin_xyz} vs {label.origin_xyz}")
    if not np.allclose(image.direction, label.direction, rtol=0, atol=1e-4):
        problems.append("direction differs")
    if problems:
        raise KitssegError(f"case {case_id}: image/label geometry mismatch: {'; '.join(problems)}")


def load_case(case: RawCase, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray, CaseProperties]:
    """Read and check one case: canonical image (file dtype, a view), uint8 label, geometry."""
    check_geometry(case.case_id, read_properties(case.image), read_properties(case.label))
    image, props = load_volume(case.image)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise KitssegError(f"{case.image}: image holds NaN or infinite voxels")
    label, _ = load_volume(case.label)
    check_label_values(case, label, info)
    return image, np.ascontiguousarray(label, dtype=np.uint8), props


def check_label_values(case: RawCase, label: np.ndarray, info: DatasetInfo) -> None:
    """Raise if the label map holds values that dataset.json does not declare."""
    if not np.issubdtype(label.dtype, np.integer):
        raise KitssegError(f"{case.label}: label map must hold integers, not {label.dtype}")
    if label.dtype == np.uint8:  # the usual case: a histogram is much faster than a sort
        present = np.nonzero(label_histogram(label))[0]
    else:
        present = np.unique(label)
    unknown = sorted(set(present.tolist()) - info.label_values)
    if unknown:
        raise KitssegError(f"{case.label}: labels {unknown} not declared in dataset.json "
                           f"(declared: {sorted(info.label_values)})")


def check_dataset(raw_dir: Path) -> list[str]:
    """Check every case of a raw dataset; return one error line per bad case (empty if all good)."""
    info, cases = list_cases(raw_dir)
    errors = []
    for case in cases:
        try:
            load_case(case, info)
        except KitssegError as exc:
            errors.append(str(exc))
    return errors
