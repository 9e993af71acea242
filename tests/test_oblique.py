"""Oblique scans: a gantry tilt is read as axis-aligned and round-trips exactly; a strongly oblique
scan is predicted on the nearest axis-aligned grid and its labels come back on its own grid."""
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from kitsseg import io as kio
from kitsseg.cli import predict_main
from kitsseg.inference.predictor import Predictor
from kitsseg.inference.run import predict_inputs
from tests.test_predictor import LEVEL_HU, coarse_oracle, fine_oracle, paper_plans


def rotation_about_z(degrees: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def rotation_about_x(degrees: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)


def truth_labels() -> np.ndarray:
    """Raw (k, j, i) label map: a kidney block with a tumour inside."""
    labels = np.zeros((40, 60, 60), np.uint8)
    labels[10:30, 18:42, 15:37] = 1
    labels[16:24, 26:34, 21:29] = 2
    return labels


def scan(direction) -> tuple[sitk.Image, np.ndarray]:
    """A scan whose intensities encode the truth for the oracles, and the truth (raw array)."""
    labels = truth_labels()
    image = sitk.GetImageFromArray((labels.astype(np.int16) * int(LEVEL_HU) - int(LEVEL_HU)))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-30.0, 12.0, 400.0))
    image.SetDirection(direction)
    return image, labels


def geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def oracle_predictor() -> Predictor:
    return Predictor(paper_plans(cysts=False), [coarse_oracle], [fine_oracle(3)])


def test_obliquity_and_the_nearest_axes_known_values():
    assert kio.obliquity_deg(rotation_about_x(5.0)) == pytest.approx(5.0)
    assert not kio.is_oblique(kio.CaseProperties((2, 2, 2), (1, 1, 1), (0, 0, 0), rotation_about_x(5.0)))
    assert kio.is_oblique(kio.CaseProperties((2, 2, 2), (1, 1, 1), (0, 0, 0), rotation_about_z(45.0)))
    # 45 degrees about z: both in-plane axes are equally close to x and y; each gets its own (the old
    # argmax read both as x and raised ValueError)
    assert kio.canonical_axes(rotation_about_z(45.0)) == ((0, 1, 2), (False, False, False))
    # 60 degrees: image x is read as physical y (numpy axis 1), image y as physical -x (numpy axis 2, flipped)
    assert kio.canonical_axes(rotation_about_z(60.0)) == ((0, 2, 1), (False, False, True))


def test_axis_aligned_grid_covers_the_rotated_image():
    props = kio.CaseProperties((61, 31, 11), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0), rotation_about_z(45.0))
    grid = kio.axis_aligned_grid(props)
    half = np.sqrt(0.5)
    # corners: x = 5 + (60 i - 60 j) * half, y = 6 + (60 i + 60 j) * half (i, j in {0, 1}: 60 mm each way)
    assert grid.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert grid.spacing_xyz == (1.0, 2.0, 3.0)
    assert grid.size_xyz == (int(np.ceil(120 * half)) + 1, int(np.ceil(120 * half / 2)) + 1, 11)
    np.testing.assert_allclose(grid.origin_xyz, (5.0 - 60 * half, 6.0, 7.0), atol=1e-9)


def test_gantry_tilt_round_trips_exactly():
    """A 5-degree tilt is read as axis-aligned: the labels are those of the same array without the
    tilt, voxel for voxel, on exactly the input's geometry."""
    tilted, truth = scan(rotation_about_x(5.0))
    straight, _ = scan((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    predictor = oracle_predictor()
    out = predictor.predict(tilted)
    assert geometry(out) == geometry(tilted)
    got = sitk.GetArrayFromImage(out)
    np.testing.assert_array_equal(got, sitk.GetArrayFromImage(predictor.predict(straight)))
    assert dice(got > 0, truth > 0) > 0.97 and dice(got == 2, truth == 2) > 0.9


def test_strongly_oblique_scan_through_the_predictor():
    image, truth = scan(rotation_about_z(45.0))
    out = oracle_predictor().predict(image)
    assert geometry(out) == geometry(image)
    got = sitk.GetArrayFromImage(out)
    assert dice(got > 0, truth > 0) > 0.9 and dice(got == 2, truth == 2) > 0.8  # where the scan has them


def test_strongly_oblique_scan_through_the_batch_with_an_oracle(tmp_path):
    image, truth = scan(rotation_about_z(45.0))
    sitk.WriteImage(image, str(tmp_path / "oblique.nii.gz"))
    assert predict_inputs(oracle_predictor(), tmp_path / "oblique.nii.gz", tmp_path / "out", quiet=True) == 0
    out = sitk.ReadImage(str(tmp_path / "out" / "oblique.nii.gz"))
    assert geometry(out) == geometry(sitk.ReadImage(str(tmp_path / "oblique.nii.gz")))
    got = sitk.GetArrayFromImage(out)
    assert dice(got > 0, truth > 0) > 0.9 and dice(got == 2, truth == 2) > 0.8
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    # volumes on the input's grid (2 mm^3 voxels), within a voxel layer of the truth's
    assert row["status"] == "ok" and row["kidney_ml"] == pytest.approx((truth > 0).sum() * 2 / 1000, rel=0.1)


def test_predict_command_on_a_folder_with_an_oblique_scan(tmp_path, phantom_raw, tiny_models, capsys):
    """Two normal scans and one rotated 45 degrees: three label maps on their inputs' grids,
    summary.csv with three rows, exit 0, no traceback; --save-probabilities refuses the oblique one
    alone, in one line, and the batch goes on (exit 1, as for any failed case)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("case_00000", "case_00001"):
        shutil.copy(phantom_raw / "imagesTr" / f"{case}_0000.nii.gz", inputs)
    oblique = sitk.ReadImage(str(phantom_raw / "imagesTr" / "case_00002_0000.nii.gz"))
    oblique.SetDirection(rotation_about_z(45.0))
    sitk.WriteImage(oblique, str(inputs / "tilted_0000.nii.gz"))
    arguments = ["-i", str(inputs), "-m", str(tiny_models), "--device", "cpu", "--quiet"]
    assert predict_main([*arguments, "-o", str(tmp_path / "out")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("case")
    assert sorted(summary.index) == ["case_00000", "case_00001", "tilted"]
    assert not summary["status"].str.startswith("error").any()
    for case, source in (("case_00000", "case_00000_0000"), ("tilted", "tilted_0000")):
        written = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert geometry(written) == geometry(sitk.ReadImage(str(inputs / f"{source}.nii.gz")))

    (inputs / "case_00000_0000.nii.gz").unlink()  # the refusal needs one normal scan beside the oblique one
    assert predict_main([*arguments, "-o", str(tmp_path / "probabilities"), "--save-probabilities"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{inputs / 'tilted_0000.nii.gz'}: an oblique image" in err
    summary = pd.read_csv(tmp_path / "probabilities" / "summary.csv").set_index("case")
    assert summary.loc["tilted", "status"].startswith("error:")
    assert (tmp_path / "probabilities" / "case_00001_probabilities.npz").exists()
