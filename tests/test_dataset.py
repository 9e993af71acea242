import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg.dataset import DatasetInfo, check_dataset, check_geometry, list_cases, load_case
from kitsseg.errors import KitssegError
from kitsseg.io import CaseProperties
from tests.conftest import KITS19_DIRECTION


@pytest.fixture
def raw(phantom_raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(phantom_raw, copy)
    return copy


def test_lists_cases_sorted(raw):
    info, cases = list_cases(raw)
    assert [c.case_id for c in cases] == [f"case_0000{i}" for i in range(5)]
    assert info.labels["kidney"] == 1 and info.file_ending == ".nii.gz"
    assert check_dataset(raw) == []


def test_load_case_is_canonical(raw):
    info, cases = list_cases(raw)
    image, label, props = load_case(cases[0], info)
    assert image.shape == label.shape == props.shape == (32, 64, 64)
    assert image.dtype == np.int16 and label.dtype == np.uint8  # file dtype, no copy
    assert set(np.unique(label)) <= {0, 1, 2, 3}


def test_missing_key_in_dataset_json(raw):
    data = json.loads((raw / "dataset.json").read_text())
    del data["labels"]
    (raw / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(KitssegError, match="missing key.*labels"):
        list_cases(raw)


def test_missing_label_and_missing_image(raw):
    (raw / "labelsTr" / "case_00001.nii.gz").unlink()
    with pytest.raises(KitssegError, match="label file missing for case case_00001"):
        list_cases(raw)


def test_missing_image(raw):
    (raw / "imagesTr" / "case_00002_0000.nii.gz").unlink()
    with pytest.raises(KitssegError, match="image missing for case case_00002"):
        list_cases(raw)


def test_labels_outside_dataset_json(raw):
    path = raw / "labelsTr" / "case_00000.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 7
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    errors = check_dataset(raw)
    assert len(errors) == 1 and "case_00000.nii.gz" in errors[0] and "[7]" in errors[0]


def test_truncated_label_reported_by_case(raw):
    path = raw / "labelsTr" / "case_00003.nii.gz"
    path.write_bytes(path.read_bytes()[:500])
    errors = check_dataset(raw)
    assert len(errors) == 1 and "case_00003.nii.gz" in errors[0]


@pytest.mark.parametrize("field, value, message", [
    ("size_xyz", (2, 3, 5), "size"),
    ("spacing_xyz", (1.0, 1.0, 3.01), "spacing"),
    ("origin_xyz", (0.0, 0.0, 0.01), "origin"),
    ("direction", KITS19_DIRECTION, "direction"),
])
def test_geometry_mismatch(field, value, message):
    base = CaseProperties((2, 3, 4), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    check_geometry("c", base, base)
    check_geometry("c", base, CaseProperties(**{**base.__dict__, "spacing_xyz": (1.0, 1.0, 3.002)}))
    other = CaseProperties(**{**base.__dict__, field: value})
    with pytest.raises(KitssegError, match=f"case c: image/label geometry mismatch: {message}"):
        check_geometry("c", base, other)


def test_dataset_info_rejects_wrong_types(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": "1"},
                                "numTraining": 1, "file_ending": ".nii.gz"}))
    with pytest.raises(KitssegError, match=r"dataset.json: label value '1' is not an integer"):
        DatasetInfo.load(path)
    path.write_text("{not json")
    with pytest.raises(KitssegError, match="not valid JSON"):
        DatasetInfo.load(path)
