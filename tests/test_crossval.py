"""kits_crossval on two folds of tiny trained models, kits_ensemble, kits_overlay."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from kitsseg import crossval
from kitsseg.cli import ensemble_main
from kitsseg.crossval import decide_postprocessing, run_crossval
from kitsseg.errors import KitssegError
from kitsseg.inference.ensemble import load_probabilities, save_probabilities
from kitsseg.inference.predictor import CascadeResult, Predictor
from kitsseg.io import CaseProperties, load_volume
from kitsseg.labels import ClassMap
from kitsseg.paths import DatasetPaths
from kitsseg.planning import load_plans
from kitsseg.postprocessing import LESION_WEIGHT, PostprocessConfig
from kitsseg.training.trainer import TrainConfig, train


def test_decision_rule():
    before = {"mean": {"kidney_dice": 0.90, "masses_dice": 0.70, "tumor_dice": 0.60}}
    better = {"mean": {"kidney_dice": 0.93, "masses_dice": 0.70, "tumor_dice": 0.60}}
    mixed = {"mean": {"kidney_dice": 0.95, "masses_dice": 0.69, "tumor_dice": 0.60}}
    assert decide_postprocessing(before, better) is True
    assert decide_postprocessing(before, mixed) is False  # a region got worse
    assert decide_postprocessing(before, before) is False  # no improvement


@pytest.fixture(scope="module")
def two_folds(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cv") / "root"
    shutil.copytree(tiny_dataset.root, root)
    paths = DatasetPaths(root, tiny_dataset.name)
    for fold in ("0", "1"):
        for stage in ("3d_coarse", "3d_fine"):
            train(paths, TrainConfig(stage=stage, fold=fold, epochs=1, iters_per_epoch=4, val_iters=1, lr=3e-3,
                                     device="cpu", num_workers=0, augment_strength=0.0), quiet=True)
    return paths


@pytest.mark.slow
def test_crossval_writes_pooled_evaluation_and_decision(two_folds):
    decision = run_crossval(two_folds, ["0", "1"], device="cpu", quiet=True)
    splits = json.loads(two_folds.splits.read_text())
    validated = sorted(splits[0]["val"] + splits[1]["val"])
    for kind in ("unprocessed", "postprocessed"):
        folder = two_folds.results / "crossval" / kind
        assert sorted(p.name[:-7] for p in folder.glob("*.nii.gz")) == validated
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["num_cases"] == len(validated)
        run_record = json.loads((folder / "kitsseg_run.json").read_text())
        assert run_record["folds"] == ["0", "1"] and len(run_record["checkpoints"]) == 4
    written = json.loads((two_folds.results / "postprocessing.json").read_text())
    assert written == decision and isinstance(written["keep_largest_kidney_component"], bool)
    predictor = Predictor.from_model_dir(two_folds.results, device="cpu")
    assert predictor.postprocess.keep_largest_kidney_component == decision["keep_largest_kidney_component"]
    # kits_predict follows a decision written by hand, too
    (two_folds.results / "postprocessing.json").write_text(json.dumps({"keep_largest_kidney_component": False}))
    written_by_hand = Predictor.from_model_dir(two_folds.results, device="cpu").postprocess
    assert written_by_hand == PostprocessConfig(False, LESION_WEIGHT)  # no weight in the file: the default
    (two_folds.results / "postprocessing.json").write_text(json.dumps({"keep_largest_kidney_component": True,
                                                                       "lesion_weight": 1.5}))
    assert Predictor.from_model_dir(two_folds.results, device="cpu").postprocess == PostprocessConfig(True, 1.5)
    (two_folds.results / "postprocessing.json").write_text(json.dumps({"keep_largest_kidney_component": True,
                                                                       "lesion_weight": 0}))
    with pytest.raises(KitssegError, match="lesion weight 0.0: must be above 0"):
        Predictor.from_model_dir(two_folds.results, device="cpu")
    (two_folds.results / "postprocessing.json").write_text(json.dumps(decision))  # the module's later tests read it


def _predict(paths, out, *extra):
    command = [sys.executable, "-m", "kitsseg.cli", "predict", "-i", str(paths.raw / "imagesTr"), "-o", str(out),
               "--data-root", str(paths.root), "-d", paths.name, "--device", "cpu", "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _float16_ties(entries: list, shape: tuple) -> np.ndarray:
    """Voxels where a saved VOI's two most probable classes are within two float16 steps (rounding
    and the mean of overlapping VOIs): argmax there depends on rounding, not on the ensemble."""
    ties = np.zeros(shape, bool)
    for box, probabilities in entries:
        top_two = np.sort(probabilities, axis=0)[-2:]
        ties[box] |= top_two[1] - top_two[0] <= 2 * np.spacing(np.float16(top_two[1])).astype(np.float32)
    return ties


@pytest.mark.slow
def test_ensemble_of_saved_probabilities(two_folds, tmp_path):
    _predict(two_folds, tmp_path / "f0", "-f", "0", "--save-probabilities", "--overlays", "--no-postprocess")
    _predict(two_folds, tmp_path / "f1", "-f", "1", "--save-probabilities", "--no-postprocess")
    assert (tmp_path / "f0" / "case_00000.png").exists()
    run = lambda *dirs, out: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "kitsseg.cli", "ensemble", "-i", *map(str, dirs), "-o", str(out), "--quiet",
         "--no-postprocess"], capture_output=True, text=True)
    assert run(tmp_path / "f0", tmp_path / "f0", out=tmp_path / "self").returncode == 0
    for case in ("case_00000", "case_00003"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "f0" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "self" / f"{case}.nii.gz")))
        # the same model twice gives its own prediction, except where the float16 probabilities tie
        assert (a == b).mean() > 0.99
        assert not np.any((a != b) & ~_float16_ties(load_probabilities(tmp_path / "f0", case)[2], a.shape))
    assert run(tmp_path / "f0", tmp_path / "f1", out=tmp_path / "both").returncode == 0
    both = sitk.ReadImage(str(tmp_path / "both" / "case_00000.nii.gz"))
    source = sitk.ReadImage(str(two_folds.raw / "imagesTr" / "case_00000_0000.nii.gz"))
    assert both.GetSize() == source.GetSize() and both.GetOrigin() == source.GetOrigin()


class ReferencePredictor:
    """Stands in for a fold's cascade: its postprocessed map is the reference itself, its unprocessed map
    adds a false kidney of `blob` voxels in a corner, which keeping one component removes."""

    def __init__(self, paths: DatasetPaths, fold: str, blob: int):
        self.plans, self.blob = load_plans(paths.plans), blob
        self.checkpoints = [paths.results / f"fold_{fold}.pt"]
        self.checkpoints[0].parent.mkdir(parents=True, exist_ok=True)
        self.checkpoints[0].write_bytes(b"stand-in")
        self.postprocess = PostprocessConfig()
        self.references = {}
        for label in sorted((paths.raw / "labelsTr").glob("*.nii.gz")):
            image, _ = load_volume(paths.raw / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz"))
            self.references[np.ascontiguousarray(image).tobytes()] = load_volume(label, np.uint8)[0]

    def predict_array(self, image_hu, spacing_mm, keep_unprocessed=False):
        reference = self.references[np.ascontiguousarray(image_hu).tobytes()]
        unprocessed = reference.copy()
        assert not unprocessed[:self.blob, :1, :1].any()
        unprocessed[:self.blob, :1, :1] = 1
        return CascadeResult(reference.copy(), 1, unprocessed)


@pytest.fixture
def crossval_dataset(tiny_dataset, tmp_path, monkeypatch):
    """The tiny dataset's raw cases, plans and splits; kits_crossval's predictors stand-ins whose
    false kidney has `blob[0]` voxels (changed by a test to model new checkpoints)."""
    paths = DatasetPaths(tmp_path / "root", tiny_dataset.name)
    shutil.copytree(tiny_dataset.raw, paths.raw)
    paths.preprocessed.mkdir(parents=True)
    for source in (tiny_dataset.plans, tiny_dataset.splits):
        shutil.copy(source, paths.preprocessed)
    blob = [8]
    monkeypatch.setattr(crossval.Predictor, "from_model_dir",
                        lambda results, folds, device, postprocess: ReferencePredictor(paths, folds[0], blob[0]))
    return paths, blob


def expected_kidney_dice(paths: DatasetPaths, cases, blob: int) -> float:
    """Mean over cases of 2|K| / (2|K| + blob): the reference K against K plus a false kidney."""
    sizes = [int((load_volume(paths.raw / "labelsTr" / f"{c}.nii.gz")[0] > 0).sum()) for c in cases]
    return float(np.mean([2 * k / (2 * k + blob) for k in sizes]))


def test_crossval_decision_from_known_dice(crossval_dataset):
    """Postprocessing removes the false kidney: kidney Dice rises from its known value to 1, no region
    gets worse, so the component is kept (the arguments swapped would decide the opposite)."""
    paths, blob = crossval_dataset
    decision = run_crossval(paths, ["0", "1"], device="cpu", quiet=True)
    splits = json.loads(paths.splits.read_text())
    validated = splits[0]["val"] + splits[1]["val"]
    assert decision["mean_dice_postprocessed"] == {"kidney_dice": 1.0, "masses_dice": 1.0, "tumor_dice": 1.0}
    assert decision["mean_dice_unprocessed"]["kidney_dice"] == pytest.approx(
        expected_kidney_dice(paths, validated, blob[0]), abs=1e-12)
    assert decision["mean_dice_unprocessed"]["tumor_dice"] == 1.0
    assert decision["keep_largest_kidney_component"] is True and decision["lesion_weight"] == LESION_WEIGHT
    assert json.loads((paths.results / "postprocessing.json").read_text())["keep_largest_kidney_component"] is True


def test_crossval_rerun_uses_only_its_own_fresh_predictions(crossval_dataset):
    """A rerun after new checkpoints, with fewer folds: the pooled evaluation holds this run's cases only,
    predicted by this run's models (no label map or reference left from the earlier run counts)."""
    paths, blob = crossval_dataset
    run_crossval(paths, ["0", "1"], device="cpu", quiet=True)
    blob[0] = 20  # new checkpoints: another false kidney
    decision = run_crossval(paths, ["0"], device="cpu", quiet=True)
    fold0 = json.loads(paths.splits.read_text())[0]["val"]
    for kind in ("unprocessed", "postprocessed"):
        folder = paths.results / "crossval" / kind
        assert sorted(p.name[:-7] for p in folder.glob("*.nii.gz")) == sorted(fold0)
        assert sorted(pd.read_csv(folder / "per_case.csv", dtype={"case": str})["case"]) == sorted(fold0)
    assert decision["mean_dice_unprocessed"]["kidney_dice"] == pytest.approx(
        expected_kidney_dice(paths, fold0, 20), abs=1e-12)


def test_ensemble_is_the_average_of_both_folders(tmp_path):
    """Two folders' probabilities written by hand; the label map is the argmax of their average, which
    differs from either folder's own argmax (so ignoring a folder shows)."""
    props = CaseProperties((10, 8, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    classes = ClassMap(("background", "kidney", "tumor"), (0, 1, 2))
    shared, b_only = (slice(1, 5), slice(1, 7), slice(1, 9)), (slice(5, 6), slice(0, 3), slice(0, 3))

    def probabilities(shape, left, right):
        p = np.empty((3, *shape), np.float16)
        half = shape[-1] // 2
        p[..., :half] = np.asarray(left, np.float16)[:, None, None, None]
        p[..., half:] = np.asarray(right, np.float16)[:, None, None, None]
        return p

    save_probabilities([(shared, probabilities((4, 6, 8), (0.4, 0.6, 0.0), (0.1, 0.2, 0.7)))],
                       props, classes, tmp_path / "a", "case")
    save_probabilities([(shared, probabilities((4, 6, 8), (0.4, 0.0, 0.6), (0.3, 0.3, 0.4))),
                        (b_only, probabilities((1, 3, 3), (0.2, 0.8, 0.0), (0.2, 0.8, 0.0)))],
                       props, classes, tmp_path / "b", "case")
    assert ensemble_main(["-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
                          "--no-postprocess", "--quiet"]) == 0
    expected = np.zeros((6, 8, 10), np.uint8)
    expected[1:5, 1:7, 5:9] = 2  # right half: (0.2, 0.25, 0.55); left half (0.4, 0.3, 0.3): background
    # b_only: (0.6, 0.4, 0) with the first folder's background there: background
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    np.testing.assert_array_equal(got, expected)
    # lesion weight 3: the left half's tumour 0.3 x 3 = 0.9 beats background's 0.4
    assert ensemble_main(["-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "weighted"),
                          "--no-postprocess", "--lesion-weight", "3", "--quiet"]) == 0
    expected[1:5, 1:7, 1:5] = 2
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "weighted" / "case.nii.gz")))
    np.testing.assert_array_equal(got, expected)
