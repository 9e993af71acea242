import itertools
import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from kitsseg.errors import KitssegError
from kitsseg.evaluation import case_metrics, dice, evaluate_folders, surface_metrics, surface_voxels

SPACING = (2.5, 0.8, 0.6)  # anisotropic


def test_dice_by_hand():
    a = np.zeros((1, 1, 10), bool)
    b = np.zeros((1, 1, 10), bool)
    a[..., :6] = True
    b[..., 3:8] = True  # overlap 3, sizes 6 and 5
    assert dice(a, b) == pytest.approx(6 / 11)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def brute_force(p, r, spacing, tolerance):
    """Surface voxels by checking the 6 neighbours one by one; all pairwise distances."""
    def surface(mask):
        points = []
        for idx in zip(*np.nonzero(mask)):
            for axis, step in itertools.product(range(3), (-1, 1)):
                n = list(idx)
                n[axis] += step
                if not (0 <= n[axis] < mask.shape[axis]) or not mask[tuple(n)]:
                    points.append(idx)
                    break
        return np.array(points, float) * np.array(spacing)
    sp, sr = surface(p), surface(r)
    d = np.sqrt(((sp[:, None, :] - sr[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = d.min(1), d.min(0)
    sd = ((d_pr <= tolerance).sum() + (d_rp <= tolerance).sum()) / (len(d_pr) + len(d_rp))
    return sd, max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (7, 12, 13)
    p = np.zeros(shape, bool)
    r = np.zeros(shape, bool)
    p[1:5, 2:9, 3:10] = True
    r[2:6, 3:11, 1:8] = True
    p &= rng.random(shape) > 0.15  # ragged surfaces with holes
    r |= rng.random(shape) > 0.93
    for tolerance in (1.0331, 1.1498, 2.0):
        sd, hd95 = surface_metrics(p, r, SPACING, tolerance)
        expected_sd, expected_hd = brute_force(p, r, SPACING, tolerance)
        assert sd == pytest.approx(expected_sd, abs=1e-6)
        assert hd95 == pytest.approx(expected_hd, abs=1e-6)


def test_surface_of_a_cube_by_hand():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert surface_voxels(mask).sum() == 26  # a 3^3 cube less its centre


def test_empty_rules():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert surface_metrics(empty, empty, SPACING, 1.0) == (1.0, 0.0)
    sd, hd = surface_metrics(full, empty, SPACING, 1.0)
    assert sd == 0.0 and np.isnan(hd)


def test_regions_and_kits19_composite():
    reference = np.zeros((4, 10, 10), np.uint8)
    reference[:, 2:8, 2:8] = 1
    reference[:, 3:5, 3:5] = 2
    reference[:, 6:7, 6:7] = 3
    prediction = reference.copy()
    prediction[:, 3:5, 3:5] = 1  # tumour missed, called kidney
    row = case_metrics(prediction, reference, SPACING)
    assert row["kidney_dice"] == 1.0  # label > 0 unchanged
    assert row["tumor_dice"] == 0.0
    assert row["masses_dice"] == pytest.approx(2 * 4 / (4 + 20))  # cyst 4 voxels kept, masses 20 + 4
    official = ((2 * ((prediction > 0) & (reference > 0)).sum() / ((prediction > 0).sum() + (reference > 0).sum()))
                + 0.0) / 2
    assert row["composite_kits19"] == pytest.approx(official)
    assert row["tumor_vol_err_ml"] == pytest.approx(16 * np.prod(SPACING) / 1000)


def write(array, path, spacing=(0.6, 0.8, 2.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_folders_missing_prediction_and_geometry_mismatch(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    a = np.zeros((6, 10, 10), np.uint8)
    a[1:5, 2:8, 2:8] = 1
    a[2:4, 3:5, 3:5] = 2
    write(a, ref / "case_1.nii.gz")
    write(a, ref / "case_2.nii.gz")
    write(a, pred / "case_1.nii.gz")
    with pytest.warns(UserWarning, match="case case_2: no prediction"):
        summary = evaluate_folders(ref, pred, tmp_path / "out", quiet=True)
    table = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert list(table["case"]) == ["case_1", "case_2"]
    assert table.loc[0, "kidney_dice"] == 1.0 and table.loc[1, "kidney_dice"] == 0.0
    assert summary["mean"]["kidney_dice"] == 0.5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mean"]["composite_kits19"] == 0.5
    write(a, pred / "case_2.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(KitssegError, match="case_2.nii.gz: geometry differs"):
        evaluate_folders(ref, pred, tmp_path / "out", quiet=True)


def test_kits19_metric_set(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    a = np.zeros((4, 6, 6), np.uint8)
    a[1:3, 1:5, 1:5] = 1
    write(a, ref / "c.nii.gz")
    summary = evaluate_folders(ref, ref, tmp_path / "out", metrics="kits19", quiet=True)
    assert list(summary["mean"]) == ["kidney_dice", "tumor_dice", "composite_kits19"]
    assert summary["mean"] == {"kidney_dice": 1.0, "tumor_dice": 1.0, "composite_kits19": 1.0}
