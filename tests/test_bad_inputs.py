"""Bad inputs x commands: one clear 'error:' line naming the file (or a warning and a skip),
a non-zero exit for errors, no traceback, no partial output, the other cases still processed."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg import cli
from kitsseg.planning import FINE

GOOD = "case_00000"


def _image(array, spacing=(0.8, 0.8, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _like(reference: sitk.Image, array) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def make_bad(kind: str, good: sitk.Image, path):
    """Write the bad image `kind` to `path`; return the label map that goes with it (or None)."""
    array = sitk.GetArrayFromImage(good)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        sitk.WriteImage(good, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n" * 100)
    elif kind == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(array[0]), str(path))
        return sitk.GetImageFromArray(np.zeros(array.shape[1:], np.uint8))
    elif kind == "4d":
        sitk.WriteImage(sitk.JoinSeries([good, good]), str(path))
    elif kind == "nan":
        values = array.astype(np.float32)
        values[5, 10, 10] = np.nan
        sitk.WriteImage(_like(good, values), str(path))
    elif kind == "constant":
        sitk.WriteImage(_like(good, np.full_like(array, 40)), str(path))
    elif kind == "tiny":
        sitk.WriteImage(_image(np.full((5, 5, 5), 40, np.int16)), str(path))
        labels = np.zeros((5, 5, 5), np.uint8)
        labels[2, 2, 2] = 1
        return _image(labels)
    elif kind in ("10mm", "micrometres"):
        # 10 mm slices; or a header giving micrometres as millimetres, so the scan is 50 m across
        spacing = (*good.GetSpacing()[:2], 10.0) if kind == "10mm" else tuple(1000 * s for s in good.GetSpacing())
        image = sitk.Image(good)
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(path))
        return spacing
    return None


KINDS = ["empty", "truncated", "text", "2d", "4d", "nan", "constant", "tiny", "10mm", "micrometres"]
FAILS_TO_READ = {"empty", "truncated", "text", "2d", "4d"}
OVER_MEMORY = {"micrometres"}  # the memory guard stops it before any resampling


def check_output(code, captured, name):
    assert "Traceback" not in captured.err
    if code != 0:
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert errors and any(name in line for line in errors), captured.err


def _good(phantom_raw):
    return sitk.ReadImage(str(phantom_raw / "imagesTr" / f"{GOOD}_0000.nii.gz"))


@pytest.mark.parametrize("kind", KINDS)
def test_predict(kind, tmp_path, phantom_raw, tiny_models, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(phantom_raw / "imagesTr" / f"{GOOD}_0000.nii.gz", inputs)
    # SimpleITK's NIfTI reader turns NaN into numbers; MHA keeps them, so that is where they can reach us
    name = "bad_0000.mha" if kind == "nan" else "bad_0000.nii.gz"
    make_bad(kind, _good(phantom_raw), inputs / name)
    code = cli.predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(tiny_models),
                             "--device", "cpu", "--quiet"])
    check_output(code, capsys.readouterr(), name)
    assert (tmp_path / "out" / f"{GOOD}.nii.gz").exists()  # the good case went on
    assert (code == 1) == (kind in FAILS_TO_READ | OVER_MEMORY | {"nan"})
    assert (tmp_path / "out" / "bad.nii.gz").exists() == (code == 0)
    assert not list((tmp_path / "out").glob(".tmp-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_plan_and_preprocess(kind, tmp_path, phantom_raw, capsys):
    raw = tmp_path / "raw" / "P"
    shutil.copytree(phantom_raw, raw)
    own = sitk.ReadImage(str(raw / "imagesTr" / "case_00001_0000.nii.gz"))
    labels = make_bad(kind, own, raw / "imagesTr" / "case_00001_0000.nii.gz")
    if isinstance(labels, tuple):  # a new spacing for the label map too
        label = sitk.ReadImage(str(raw / "labelsTr" / "case_00001.nii.gz"))
        label.SetSpacing(labels)
        sitk.WriteImage(label, str(raw / "labelsTr" / "case_00001.nii.gz"))
    elif labels is not None:
        sitk.WriteImage(labels, str(raw / "labelsTr" / "case_00001.nii.gz"))
    argv = ["--data-root", str(tmp_path), "-d", "P", "-np", "1", "--quiet"]
    if kind in OVER_MEMORY:  # a case failing inside preprocessing: warned with its file, skipped, exit 1
        with pytest.warns(UserWarning, match="case_00001_0000.nii.gz: preprocessing needs about .* memory budget"):
            code = cli.plan_and_preprocess_main(argv)
        assert "1 case(s) failed" in capsys.readouterr().err
    else:
        code = cli.plan_and_preprocess_main(argv)
        check_output(code, capsys.readouterr(), "case_00001")
    assert (code != 0) == (kind in FAILS_TO_READ | OVER_MEMORY)  # NaN in NIfTI never reaches us (see test_predict)
    assert not list((tmp_path / "preprocessed").rglob(".tmp-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate(kind, tmp_path, phantom_raw, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    shutil.copytree(phantom_raw / "labelsTr", ref)
    pred.mkdir()
    shutil.copy(ref / f"{GOOD}.nii.gz", pred)
    make_bad(kind, sitk.ReadImage(str(ref / "case_00001.nii.gz")), pred / "case_00001.nii.gz")
    code = cli.evaluate_main(["-r", str(ref), "-p", str(pred), "--quiet"])
    check_output(code, capsys.readouterr(), "case_00001.nii.gz")
    assert code != 0  # unreadable, another grid, float or unknown labels: all errors
    assert not (pred / "per_case.csv").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_convert(kind, tmp_path, phantom_raw, capsys):
    src = tmp_path / "src"
    for case in (GOOD, "case_00001"):
        (src / case).mkdir(parents=True)
        shutil.copy(phantom_raw / "imagesTr" / f"{case}_0000.nii.gz", src / case / "imaging.nii.gz")
        shutil.copy(phantom_raw / "labelsTr" / f"{case}.nii.gz", src / case / "segmentation.nii.gz")
    own = sitk.ReadImage(str(src / "case_00001" / "imaging.nii.gz"))
    labels = make_bad(kind, own, src / "case_00001" / "imaging.nii.gz")
    if isinstance(labels, sitk.Image):
        sitk.WriteImage(labels, str(src / "case_00001" / "segmentation.nii.gz"))
    code = cli.convert_main(["kits", str(src), "--data-root", str(tmp_path), "--quiet"])
    check_output(code, capsys.readouterr(), "case_00001")
    assert (tmp_path / "raw" / "KiTS19" / "imagesTr" / f"{GOOD}_0000.nii.gz").exists()
    # 10 mm, micrometres: image and label geometry differ (convert only copies, so no memory is at stake)
    assert (code != 0) == (kind in FAILS_TO_READ | {"10mm", "micrometres"})


def test_unsafe_case_id_is_refused(tmp_path, phantom_raw, capsys):
    src = tmp_path / "src" / "case_..00001"
    src.mkdir(parents=True)
    shutil.copy(phantom_raw / "imagesTr" / f"{GOOD}_0000.nii.gz", src / "imaging.nii.gz")
    shutil.copy(phantom_raw / "labelsTr" / f"{GOOD}.nii.gz", src / "segmentation.nii.gz")
    assert cli.convert_main(["kits", str(tmp_path / "src"), "--data-root", str(tmp_path), "--quiet"]) == 1
    assert "case_..00001" in capsys.readouterr().err


@pytest.mark.parametrize("blocked", ["read-only folder", "folder under a regular file"])
def test_unwritable_output_folder(blocked, tmp_path, phantom_raw, tiny_models, capsys):
    """One line naming the folder, exit 1. Root ignores a folder's permissions, so the read-only folder
    is checked as another user only; no one, root included, can make a folder inside a regular file."""
    if blocked == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; the folder under a regular file runs instead")
        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o500)
    else:
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "out"
    try:
        code = cli.predict_main(["-i", str(phantom_raw / "imagesTr" / f"{GOOD}_0000.nii.gz"), "-o", str(out),
                                 "-m", str(tiny_models), "--device", "cpu", "--quiet"])
    finally:
        if out.is_dir():
            out.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(tmp_path) in err
    assert not out.exists() or not any(out.iterdir())


def test_dataset_json_missing_key_and_plans_with_a_wrong_type(tmp_path, phantom_raw, capsys):
    raw = tmp_path / "raw" / "P"
    shutil.copytree(phantom_raw, raw)
    data = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({k: v for k, v in data.items() if k != "file_ending"}))
    assert cli.plan_and_preprocess_main(["--data-root", str(tmp_path), "-d", "P", "--quiet"]) == 1
    assert "dataset.json: missing key(s) file_ending" in capsys.readouterr().err
    (raw / "dataset.json").write_text(json.dumps(data))
    assert cli.plan_and_preprocess_main(["--data-root", str(tmp_path), "-d", "P", "--steps", "fingerprint",
                                         "plan", "--quiet"]) == 0
    plans_path = tmp_path / "preprocessed" / "P" / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["stages"][FINE]["spacing_mm"] = "one"
    plans_path.write_text(json.dumps(plans))
    capsys.readouterr()
    assert cli.plan_and_preprocess_main(["--data-root", str(tmp_path), "-d", "P", "--steps", "preprocess",
                                         "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "plans.json: invalid plans" in err and "spacing_mm" in err and "Traceback" not in err
