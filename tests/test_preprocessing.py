import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg.errors import KitssegError
from kitsseg.io import load_volume
from kitsseg.paths import DatasetPaths
from kitsseg.plan_and_preprocess import plan_and_preprocess
from kitsseg.planning import COARSE, FINE, NetworkConfig
from kitsseg.planning import IntensityConfig, StagePlan
from kitsseg.preprocessing import load_npz, normalise, preprocess_coarse, preprocess_fine, read_sidecar
from kitsseg.resampling import resample


@pytest.fixture
def dataset(phantom_raw, tmp_path):
    paths = DatasetPaths(tmp_path, "Phantom")
    shutil.copytree(phantom_raw, paths.raw)
    return paths


def run(paths, **kwargs):
    return plan_and_preprocess(paths, num_workers=1, quiet=True, **kwargs)


def test_stages_cover_the_data(dataset):
    assert run(dataset) == 0
    for case_id in [f"case_0000{i}" for i in range(5)]:
        labels, props = load_volume(dataset.raw / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
        # coarse: whole scan, shape within one voxel of extent / 6 mm
        coarse = read_sidecar(dataset.stage_dir(COARSE), case_id)
        image, label = load_npz(dataset.stage_dir(COARSE) / coarse["arrays"][0]["file"])
        extent = np.asarray(props.shape) * np.asarray(props.spacing_mm)
        assert np.all(np.abs(np.asarray(image.shape) - extent / 6.0) <= 1.0)
        assert image.dtype == np.float16 and label.dtype == np.uint8 and image.shape == label.shape
        assert -1.0 <= image.min() and image.max() <= 1.0
        assert label.max() == 1  # the coarse target is the kidney region, label > 0
        # fine: the boxes cover every kidney voxel, and the arrays are at ~1 mm
        covered = np.zeros(labels.shape, bool)
        fine = read_sidecar(dataset.stage_dir(FINE), case_id)
        for entry in fine["arrays"]:
            covered[entry["box"]] = True
            image, label = load_npz(dataset.stage_dir(FINE) / entry["file"])
            assert np.allclose(entry["spacing_mm"], 1.0, atol=0.05)
            assert label.shape == tuple(entry["shape"])
        assert covered[labels > 0].all()
        # no label lost at any stage
        assert coarse["arrays"][0]["voxels_per_label"]["1"] > 0
        for value in np.unique(labels)[1:]:
            assert sum(e["voxels_per_label"][str(value)] for e in fine["arrays"]) > 0
    splits = json.loads(dataset.splits.read_text())
    assert len(splits) == 5 and sorted(c for f in splits for c in f["val"]) == [f"case_0000{i}" for i in range(5)]


def test_coarse_voxel_mostly_kidney_and_tumour_is_foreground():
    """Two 6 mm voxels from 0.6 mm ones: the first is 32% kidney + 28% tumour + 40% background (an
    argmax per label calls it background), the second 40% kidney + 30% tumour; both are kidney region."""
    label = np.zeros((20, 10, 10), np.uint8)
    first, second = label[:10].reshape(-1), label[10:].reshape(-1)  # views: each 1000 voxels of one coarse voxel
    first[:320], first[320:600] = 1, 2
    second[:400], second[400:700] = 1, 2
    stage = StagePlan(COARSE, (6.0, 6.0, 6.0), (16, 16, 16), 2, ("background", "kidney_region"), NetworkConfig())
    coarse = preprocess_coarse(np.zeros(label.shape, np.float32), label, (0.6, 0.6, 0.6), stage, IntensityConfig())
    assert coarse.label.shape == (2, 1, 1)
    assert coarse.label.ravel().tolist() == [1, 1]
    second[:] = 0
    second[:180] = 1  # 18% kidney: background
    coarse = preprocess_coarse(np.zeros(label.shape, np.float32), label, (0.6, 0.6, 0.6), stage, IntensityConfig())
    assert coarse.label.ravel().tolist() == [1, 0]


def test_fine_cache_holds_half_a_patch_of_real_image_around_each_kidney():
    """Kidneys at 2 x 1 x 1 mm, fine stage at 1 mm with 16 x 32 x 32 crops and a 4 mm VOI margin:
    the context is 8 x 16 x 16 mm of real image per side, clipped to the scan, the VOI inside it."""
    label = np.zeros((40, 100, 120), np.uint8)
    label[8:12, 40:60, 50:70] = 1  # kidney A: z 16-24 mm, y 40-60, x 50-70
    label[9:10, 45:50, 55:60] = 2
    label[30:36, 70:90, 110:120] = 1  # kidney B touches the scan's last x voxel
    image = np.full(label.shape, 150.0, np.float32)  # 150 HU -> 0 in the [-200, 500] window
    stage = StagePlan(FINE, (1.0, 1.0, 1.0), (16, 32, 32), 2, ("background", "kidney", "tumor"),
                      NetworkConfig(), (4.0, 4.0, 4.0))
    a, b = preprocess_fine(image, label, (2.0, 1.0, 1.0), stage, IntensityConfig(), [0, 1, 2])
    assert a.box == (slice(4, 16), slice(24, 76), slice(34, 86))  # the kidney's box + 4 / 16 / 16 voxels
    assert a.image.shape == (24, 52, 52) and (a.image == 0).all()  # real image everywhere, no padding
    assert a.voi == (slice(4, 20), slice(12, 40), slice(12, 40))  # box + 2 / 4 / 4 voxels, at 1 mm
    assert (a.label[a.voi] > 0).sum() == (a.label > 0).sum() == 8 * 20 * 20
    assert b.box == (slice(26, 40), slice(54, 100), slice(94, 120))
    assert b.voi == (slice(4, 24), slice(12, 40), slice(12, 26))  # clipped at the scan: up to its end


def test_fine_label_volume_is_preserved(dataset):
    run(dataset)
    labels, props = load_volume(dataset.raw / "labelsTr" / "case_00001.nii.gz", np.uint8)
    voxel_ml = np.prod(props.spacing_mm) / 1000
    fine = read_sidecar(dataset.stage_dir(FINE), "case_00001")
    for value in (1, 2):
        original_ml = (labels == value).sum() * voxel_ml
        fine_ml = sum(e["voxels_per_label"][str(value)] * np.prod(e["spacing_mm"]) / 1000 for e in fine["arrays"])
        assert fine_ml == pytest.approx(original_ml, rel=0.1)


def test_rerun_is_a_no_op_and_overwrite_redoes(dataset):
    run(dataset)
    files = sorted(dataset.preprocessed.rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    run(dataset)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    run(dataset, overwrite=True)
    assert [f.stat().st_mtime_ns for f in files] != stamps


def test_hand_edited_plans_redo_only_that_stage(dataset):
    run(dataset)
    coarse_stamp = (dataset.stage_dir(COARSE) / "case_00000.npz").stat().st_mtime_ns
    data = json.loads(dataset.plans.read_text())
    data["stages"][FINE]["spacing_mm"] = [2.0, 2.0, 2.0]
    dataset.plans.write_text(json.dumps(data))
    run(dataset, steps=["preprocess"])
    assert (dataset.stage_dir(COARSE) / "case_00000.npz").stat().st_mtime_ns == coarse_stamp
    entry = read_sidecar(dataset.stage_dir(FINE), "case_00000")["arrays"][0]
    assert np.allclose(entry["spacing_mm"], 2.0, atol=0.1)


def test_case_without_foreground_is_skipped_for_fine(dataset):
    path = dataset.raw / "labelsTr" / "case_00002.nii.gz"
    image = sitk.ReadImage(str(path))
    empty = sitk.Image(image.GetSize(), image.GetPixelID())
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(path))
    with pytest.warns(UserWarning, match="case case_00002: no foreground"):
        assert run(dataset) == 0
    assert read_sidecar(dataset.stage_dir(FINE), "case_00002")["arrays"] == []
    assert (dataset.stage_dir(COARSE) / "case_00002.npz").exists()


def test_geometry_mismatch_stops_naming_the_case(dataset):
    path = dataset.raw / "labelsTr" / "case_00003.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    with pytest.raises(KitssegError, match="case case_00003: image/label geometry mismatch"):
        run(dataset)
    assert not dataset.preprocessed.exists()


def test_splits_are_five_seeded_folds(tmp_path):
    from kitsseg.training.splits import load_or_create_splits, make_splits

    ids = [f"case_{i:05d}" for i in range(12)]
    splits = make_splits(ids)
    assert len(splits) == 5 and splits == make_splits(list(reversed(ids)))
    assert sorted(c for f in splits for c in f["val"]) == ids
    for fold in splits:
        assert set(fold["train"]) | set(fold["val"]) == set(ids) and not set(fold["train"]) & set(fold["val"])
    path = tmp_path / "splits_final.json"
    assert load_or_create_splits(path, ids) == splits
    with pytest.warns(UserWarning, match="cover 10 of the dataset's 10 cases and list 2 it lacks; keeping the file"):
        assert load_or_create_splits(path, ids[:10]) == splits  # never silently changed
    with pytest.warns(UserWarning, match="cover 12 of the dataset's 13 cases; keeping the file"):
        assert load_or_create_splits(path, [*ids, "case_00099"]) == splits
    hand_made = [{"train": ids[2:], "val": ids[:2]}] + [{"train": ids[:2], "val": ids[2:]}]
    path.write_text(json.dumps(hand_made))
    before = path.read_bytes()
    assert load_or_create_splits(path, ids) == hand_made and path.read_bytes() == before  # never rewritten


CASES_210 = [f"case_{i:05d}" for i in range(210)]
# unsorted, mixed case (code-point order puts "KiTS" before "case"), unpadded numbers
ODD_37 = [f"{'KiTS' if i % 3 == 0 else 'case'}-{i * 7 % 101}{'b' if i % 4 == 0 else ''}" for i in range(37)]


def _nnunet_splits(ids):
    """nnU-Net v2: do_split sorts with np.sort, generate_crossval_split runs KFold(5, shuffle, 12345)."""
    from sklearn.model_selection import KFold

    keys = np.sort(list(ids))
    return [{"train": keys[tr].tolist(), "val": keys[te].tolist()}
            for tr, te in KFold(n_splits=5, shuffle=True, random_state=12345).split(keys)]


@pytest.mark.parametrize("ids", [CASES_210, ODD_37], ids=["210 cases", "37 odd ids"])
def test_splits_equal_nnunet_v2_kfold(ids):
    pytest.importorskip("sklearn.model_selection", reason="scikit-learn is needed to run nnU-Net's KFold")
    from kitsseg.training.splits import make_splits

    assert make_splits(ids) == _nnunet_splits(ids)


def test_splits_known_values_of_nnunet_rule():
    """Values computed once with nnU-Net v2's rule (sklearn KFold); runs without scikit-learn."""
    from kitsseg.training.splits import make_splits

    splits = make_splits(CASES_210)
    assert [len(f["val"]) for f in splits] == [42] * 5
    assert splits[0]["val"][:10] == ["case_00014", "case_00016", "case_00017", "case_00019", "case_00020",
                                     "case_00027", "case_00030", "case_00033", "case_00047", "case_00049"]
    assert [f["val"][0] for f in splits] == ["case_00014", "case_00002", "case_00004", "case_00000", "case_00001"]
    assert splits[3]["train"][:3] == ["case_00001", "case_00002", "case_00004"]
    odd = make_splits(ODD_37)
    assert [len(f["val"]) for f in odd] == [8, 8, 7, 7, 7]
    assert odd[0]["val"] == ["KiTS-0b", "KiTS-25", "KiTS-29", "KiTS-42", "KiTS-88", "case-28b", "case-49", "case-53"]
    assert odd[4]["val"] == ["KiTS-21", "case-18", "case-36", "case-7", "case-91", "case-95b", "case-98"]


def test_training_sees_what_inference_feeds_the_networks():
    """The same scan through preprocessing (training's caches) and through the predictor's resampling
    and normalisation: equal arrays, coarse and fine, both rounded to whole HU before normalising."""
    from kitsseg.inference.predictor import Predictor
    from tests.test_predictor import paper_plans

    plans = paper_plans(cysts=False)
    z, y, x = np.indices((30, 64, 64))
    image = (7 * z + 3 * y - 2 * x - 100).astype(np.int16)  # whole HU whose resampled values are not
    label = np.zeros(image.shape, np.uint8)
    label[10:20, 20:44, 10:30] = 1
    spacing = (2.5, 0.8, 0.8)
    predictor = Predictor(plans, [lambda x: x], [lambda x: x])
    coarse = preprocess_coarse(image, label, spacing, plans.stage(COARSE), plans.intensity)
    np.testing.assert_array_equal(coarse.image, predictor._resampled(image, spacing, plans.stage(COARSE)))
    (fine,) = preprocess_fine(image, label, spacing, plans.stage(FINE), plans.intensity, (0, 1, 2))
    np.testing.assert_array_equal(fine.image, predictor._resampled(image[fine.box], spacing, plans.stage(FINE)))
    hu = resample(image[fine.box], fine.image.shape)
    assert not np.array_equal(hu, np.rint(hu))  # resampling made fractional HU...
    np.testing.assert_array_equal(fine.image, normalise(np.rint(hu), plans.intensity))  # ...that both paths round


def test_percentile_normalisation_known_values():
    """Clip to the foreground's 0.5/99.5 percentiles, then z-score with its mean and std; planned from the
    fingerprint when the preset (or -n percentile) asks for it."""
    intensity = IntensityConfig("percentile", (-100.0, 300.0), 100.0, 50.0)
    hu = np.array([-500.0, 0.0, 100.0, 250.0, 1000.0], np.float32)
    np.testing.assert_allclose(normalise(hu, intensity), [-4.0, -2.0, 0.0, 3.0, 4.0])
    from kitsseg.fingerprint import Fingerprint
    from kitsseg.planning import plan_experiment

    fingerprint = Fingerprint({}, (2.0, 0.8, 0.8), (32, 64, 64),
                              {"mean": 80.0, "std": 40.0, "min": -900.0, "max": 2000.0,
                               "percentile_00_5": -50.0, "percentile_99_5": 250.0},
                              {"median": [40.0, 25.0, 20.0], "percentile_95": [45.0, 30.0, 25.0]}, (0, 1, 2))
    plans = plan_experiment(fingerprint, "P", {"background": 0, "kidney": 1, "tumor": 2}, {}, "percentile")
    assert (plans.intensity.scheme, plans.intensity.window_hu, plans.intensity.mean, plans.intensity.std) == \
           ("percentile", (-50.0, 250.0), 80.0, 40.0)
    image = np.full((12, 30, 30), 170, np.int16)  # (170 - 80) / 40 = 2.25 everywhere
    coarse = preprocess_coarse(image, np.zeros(image.shape, np.uint8), (2.0, 0.8, 0.8), plans.stage(COARSE),
                               plans.intensity)
    np.testing.assert_allclose(coarse.image, 2.25)
    assert plans.intensity.padding_value == pytest.approx((-50.0 - 80.0) / 40.0)  # air: the window's low end
