"""kits_crossval on two folds of tiny trained models, kits_ensemble, kits_overlay."""
import json
import shutil
import subprocess
import sys

import pytest
import SimpleITK as sitk

from kitsseg.crossval import decide_postprocessing, run_crossval
from kitsseg.inference.predictor import Predictor
from kitsseg.paths import DatasetPaths
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
    assert not Predictor.from_model_dir(two_folds.results, device="cpu").postprocess.keep_largest_kidney_component


def _predict(paths, out, *extra):
    command = [sys.executable, "-m", "kitsseg.cli", "predict", "-i", str(paths.raw / "imagesTr"), "-o", str(out),
               "--data-root", str(paths.root), "-d", paths.name, "--device", "cpu", "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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
        assert (a == b).mean() > 0.999  # the same model twice: its own prediction (float16 ties aside)
    assert run(tmp_path / "f0", tmp_path / "f1", out=tmp_path / "both").returncode == 0
    both = sitk.ReadImage(str(tmp_path / "both" / "case_00000.nii.gz"))
    source = sitk.ReadImage(str(two_folds.raw / "imagesTr" / "case_00000_0000.nii.gz"))
    assert both.GetSize() == source.GetSize() and both.GetOrigin() == source.GetOrigin()
