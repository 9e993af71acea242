"""The same seed gives the same plans, the same splits and (CPU, no loader workers) the same
first 10 training losses; another seed gives other losses, so the comparison can fail."""
import csv
import json
import shutil

import pytest

from tests.conftest import TINY_PRESET
from kitsseg.paths import DatasetPaths
from kitsseg.plan_and_preprocess import plan_and_preprocess
from kitsseg.training.splits import make_splits
from kitsseg.training.trainer import TrainConfig, train


def _preprocessed(phantom_raw, root):
    paths = DatasetPaths(root, "Phantom")
    shutil.copytree(phantom_raw, paths.raw)
    preset = root / "tiny.json"
    preset.write_text(json.dumps(TINY_PRESET))
    plan_and_preprocess(paths, num_workers=2, preset=preset, quiet=True)
    return paths


def _first_losses(paths, seed):
    config = TrainConfig(stage="3d_fine", fold="0", epochs=10, iters_per_epoch=1, val_iters=1, device="cpu",
                         num_workers=0, seed=seed)  # augmentation on: its random draws are seeded too
    out = train(paths, config, quiet=True)
    with open(out / "training_log.csv") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_same_seed_same_plans_splits_and_first_ten_losses(phantom_raw, tmp_path):
    a = _preprocessed(phantom_raw, tmp_path / "a")
    b = _preprocessed(phantom_raw, tmp_path / "b")
    assert a.plans.read_bytes() == b.plans.read_bytes()
    assert a.splits.read_bytes() == b.splits.read_bytes()
    losses = _first_losses(a, seed=7)
    assert len(losses) == 10
    assert _first_losses(b, seed=7) == losses  # exactly
    shutil.rmtree(b.results)
    assert _first_losses(b, seed=8) != losses


def test_splits_depend_on_the_seed_alone():
    ids = [f"case_{k:05d}" for k in range(23)]
    assert make_splits(ids, seed=3) == make_splits(list(reversed(ids)), seed=3)
    assert make_splits(ids, seed=3) != make_splits(ids, seed=4)
