import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.kits import convert_kits
from dataset_conversion.phantom import PhantomConfig, generate_case, write_phantom_dataset
from kitsseg.dataset import check_dataset, list_cases
from kitsseg.errors import KitssegError


def test_phantom_is_deterministic_and_anatomical():
    config = PhantomConfig(shape=(32, 64, 64))
    a = generate_case(np.random.default_rng([3, 0]), config)
    b = generate_case(np.random.default_rng([3, 0]), config)
    c = generate_case(np.random.default_rng([3, 1]), config)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    image, labels, spacing = a
    assert image.dtype == np.int16 and labels.dtype == np.uint8
    assert 1.5 <= spacing[0] <= 2.5 and 0.7 <= spacing[1] == spacing[2] <= 0.9
    kidney_hu = image[labels == 1].mean()
    assert 100 < kidney_hu < 230  # enhancing parenchyma
    assert image[0, 0, 0] < -900  # air outside the torso
    # two kidneys, one per side of the midline (axis 2 = patient left)
    xs = np.nonzero(labels == 1)[2]
    assert (xs < 32).any() and (xs >= 32).any()


def test_phantom_dataset_is_valid(tmp_path):
    ids = write_phantom_dataset(tmp_path, 3, seed=0, quiet=True)  # default 64x128x128
    assert ids == ["case_00000", "case_00001", "case_00002"]
    assert check_dataset(tmp_path) == []
    image = sitk.ReadImage(str(tmp_path / "imagesTr" / "case_00000_0000.nii.gz"))
    assert image.GetSize() == (128, 128, 64)


def _fake_kits_source(shared, cases, dst):
    """KiTS layout from shared label maps, with an 'imaging' of the same geometry."""
    for case_dir in cases:
        out = dst / case_dir.name
        out.mkdir(parents=True)
        shutil.copy(case_dir / "segmentation.nii.gz", out)
        seg = sitk.ReadImage(str(case_dir / "segmentation.nii.gz"))
        image = sitk.Cast(seg, sitk.sitkInt16) * 100 - 1000
        sitk.WriteImage(image, str(out / "imaging.nii.gz"))


def test_convert_kits19_and_kits23_layouts(shared_data, tmp_path):
    k19 = [shared_data / "kits19" / c for c in ("case_00061", "case_00148")]
    k23 = [shared_data / "kits23-cysts" / c for c in ("case_00110",)]
    _fake_kits_source(shared_data, k19, tmp_path / "src19")
    _fake_kits_source(shared_data, k23, tmp_path / "src23")
    (tmp_path / "src19" / "case_00999").mkdir()  # no imaging: skipped with a warning
    for test_case in ("case_00210", "case_00211"):  # the official test set: an image, no segmentation
        _fake_kits_source(shared_data, [shared_data / "kits19" / "case_00061"], tmp_path / "tmp")
        (tmp_path / "tmp" / "case_00061").rename(tmp_path / "src19" / test_case)
        (tmp_path / "src19" / test_case / "segmentation.nii.gz").unlink()
    with pytest.warns(UserWarning, match="case_00999"):
        result19 = convert_kits(tmp_path / "src19", tmp_path / "raw19", quiet=True)
    result23 = convert_kits(tmp_path / "src23", tmp_path / "raw23", quiet=True)
    assert result19.failed == result23.failed == []
    assert result19.training == ["case_00061", "case_00148"] and result23.training == ["case_00110"]
    assert result19.test == ["case_00210", "case_00211"] and result23.test == []
    assert sorted(p.name for p in (tmp_path / "raw19" / "imagesTs").iterdir()) == [
        "case_00210_0000.nii.gz", "case_00211_0000.nii.gz"]
    assert (tmp_path / "raw19" / "imagesTs" / "case_00210_0000.nii.gz").read_bytes() == \
        (tmp_path / "src19" / "case_00210" / "imaging.nii.gz").read_bytes()
    assert len(list_cases(tmp_path / "raw19")[1]) == 2  # test images are not training cases
    command = [sys.executable, "-m", "kitsseg.cli", "convert", "kits", str(tmp_path / "src19"),
               "--data-root", str(tmp_path / "root"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 training cases and 2 test images to" in done.stdout
    labels19 = json.loads((tmp_path / "raw19" / "dataset.json").read_text())["labels"]
    labels23 = json.loads((tmp_path / "raw23" / "dataset.json").read_text())["labels"]
    assert labels19 == {"background": 0, "kidney": 1, "tumor": 2}
    assert labels23 == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    for src, raw, case in [("src19", "raw19", "case_00061"), ("src23", "raw23", "case_00110")]:
        for a, b in [(f"{src}/{case}/imaging.nii.gz", f"{raw}/imagesTr/{case}_0000.nii.gz"),
                     (f"{src}/{case}/segmentation.nii.gz", f"{raw}/labelsTr/{case}.nii.gz")]:
            x, y = sitk.ReadImage(str(tmp_path / a)), sitk.ReadImage(str(tmp_path / b))
            assert (x.GetSize(), x.GetSpacing(), x.GetOrigin(), x.GetDirection()) == \
                   (y.GetSize(), y.GetSpacing(), y.GetOrigin(), y.GetDirection())
            np.testing.assert_array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
    assert len(list_cases(tmp_path / "raw23")[1]) == 1


def test_convert_kits_reports_a_truncated_image_and_goes_on(shared_data, tmp_path, capsys):
    _fake_kits_source(shared_data, [shared_data / "kits19" / c for c in ("case_00061", "case_00148")],
                      tmp_path / "src")
    image = tmp_path / "src" / "case_00061" / "imaging.nii.gz"
    image.write_bytes(image.read_bytes()[:2000])
    result = convert_kits(tmp_path / "src", tmp_path / "raw", quiet=True)
    assert result.training == ["case_00148"] and result.failed == ["case_00061"]
    assert "case_00061/imaging.nii.gz: truncated" in capsys.readouterr().err
    assert not (tmp_path / "raw" / "imagesTr" / "case_00061_0000.nii.gz").exists()
    assert json.loads((tmp_path / "raw" / "dataset.json").read_text())["numTraining"] == 1
    (tmp_path / "src" / "case_00148" / "imaging.nii.gz").write_text("garbage")
    with pytest.raises(KitssegError, match="no labelled case could be converted"):
        convert_kits(tmp_path / "src", tmp_path / "raw2", quiet=True)
