"""benchmarks/tumour_errors.py: the tumour's missed and false volumes on a hand-built case with known counts."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tumour_errors import case_volumes, tumour_dice, tumour_error_volumes  # noqa: E402


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Two kidneys (10 x 10 x 10 each): the left holds a 4 x 4 x 4 tumour and a 2 x 2 x 2 cyst, the right none."""
    truth = np.zeros((12, 12, 30), np.uint8)
    truth[1:11, 1:11, 1:11] = 1
    truth[1:11, 1:11, 19:29] = 1
    truth[3:7, 3:7, 3:7] = 2
    truth[8:10, 8:10, 8:10] = 3
    prediction = truth.copy()
    prediction[3:7, 3:7, 3] = 1          # 16 tumour voxels called kidney
    prediction[3:7, 3, 4] = 3            # 4 tumour voxels called cyst
    prediction[3, 4:7, 4] = 0            # 3 tumour voxels called background
    prediction[3:7, 3:7, 7] = 2          # 16 kidney voxels next to the tumour called tumour
    prediction[2:4, 2:4, 20:22] = 2      # 8 voxels of the tumour-free kidney called tumour
    prediction[8:10, 8:10, 8] = 2        # 4 cyst voxels called tumour
    prediction[0, 0, 0:5] = 2            # 5 background voxels called tumour
    return prediction, truth


def test_each_error_is_counted_once_under_the_label_it_took():
    prediction, truth = _case()
    volumes = tumour_error_volumes(prediction, truth, voxel_ml=0.5)
    assert volumes == {
        "tumour_ml": 32.0, "found_ml": 0.5 * (64 - 16 - 4 - 3),
        "missed_as_kidney_ml": 8.0, "missed_as_cyst_ml": 2.0, "missed_as_background_ml": 1.5,
        "false_on_kidney_with_tumour_ml": 8.0, "false_on_kidney_without_tumour_ml": 4.0,
        "false_on_cyst_ml": 2.0, "false_on_background_ml": 2.5,
    }
    # Dice from the volumes equals Dice from the masks
    found, predicted = 64 - 23, (prediction == 2).sum()
    assert tumour_dice(volumes) == pytest.approx(2 * found / (64 + predicted))


def test_perfect_prediction_and_no_tumour_anywhere():
    _, truth = _case()
    perfect = tumour_error_volumes(truth, truth, voxel_ml=1.0)
    assert tumour_dice(perfect) == 1.0
    assert perfect["false_on_kidney_without_tumour_ml"] == perfect["missed_as_kidney_ml"] == 0.0
    healthy = np.where(truth == 2, 1, truth).astype(np.uint8)
    assert np.isnan(tumour_dice(tumour_error_volumes(healthy, healthy, voxel_ml=1.0)))


def test_case_volumes_reads_the_grid_spacing(tmp_path):
    prediction, truth = _case()
    for folder, array in (("pred", prediction), ("ref", truth)):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((5.0, 5.0, 40.0))  # 1000 mm^3 = 1 ml per voxel
        sitk.WriteImage(image, str(tmp_path / folder / "case_00000.nii.gz"))
    volumes = case_volumes(tmp_path / "pred" / "case_00000.nii.gz", tmp_path / "ref" / "case_00000.nii.gz")
    assert volumes["tumour_ml"] == 64.0 and volumes["false_on_kidney_without_tumour_ml"] == 8.0
    with pytest.raises(SystemExit, match="no reference label map"):
        case_volumes(tmp_path / "pred" / "case_00000.nii.gz", tmp_path / "ref" / "case_00001.nii.gz")
