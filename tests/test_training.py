"""End-to-end training on tiny phantoms with a tiny VB-Net (CPU, seconds)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kitsseg.checkpoint import network_from_checkpoint
from kitsseg.paths import DatasetPaths
from kitsseg.training.trainer import TrainConfig, poly_lr, train

def fresh_copy(paths: DatasetPaths, tmp_path: Path) -> DatasetPaths:
    shutil.copytree(paths.root, tmp_path / "root")
    return DatasetPaths(tmp_path / "root", paths.name)


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_poly_lr():
    assert poly_lr(0.01, 0.0) == 0.01
    assert poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 1.0) == 0.0 and poly_lr(0.01, 1.5) == 0.0


@pytest.mark.parametrize("stage", ["3d_coarse", "3d_fine"])
def test_training_writes_everything_and_learns(tiny_dataset, tmp_path, stage):
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage=stage, fold="0", epochs=4, iters_per_epoch=8, val_iters=2, lr=3e-3,
                         device="cpu", num_workers=0, augment_strength=0.0)
    out = train(paths, config, quiet=True)
    for name in ["checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "training_log.csv",
                 "progress.png", "train_config.json", "validation_summary.json"]:
        assert (out / name).exists(), name
    log = read_log(out / "training_log.csv")
    assert len(log) == 4
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    state = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert state["stage"] == stage and state["plans"]["stages"][stage]["network"]["stem_channels"] == 4
    network, plans, stage_plan = network_from_checkpoint(out / "checkpoint_final.pt")
    assert stage_plan.name == stage
    summary = json.loads((out / "validation_summary.json").read_text())
    assert summary["stage"] == stage and len(summary["per_volume"]) >= 1


def test_training_with_augmentation_workers(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage="3d_fine", fold="all", epochs=1, iters_per_epoch=3, val_iters=1,
                         device="cpu", num_workers=2, augment_strength=1.0)
    out = train(paths, config, quiet=True)
    assert out.name == "fold_all" and (out / "checkpoint_final.pt").exists()


def _train_command(paths, *extra):
    return [sys.executable, "-m", "kitsseg.cli", "train", "3d_coarse", "0", "--data-root", str(paths.root),
            "-d", paths.name, "--epochs", "3", "--iters-per-epoch", "6", "--val-iters", "1", "--device", "cpu",
            "--num-workers", "0", "--augment", "0", "--seed", "3", "--quiet", *extra]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses(tiny_dataset, tmp_path):
    reference = fresh_copy(tiny_dataset, tmp_path / "a")
    assert subprocess.run(_train_command(reference), capture_output=True).returncode == 0
    expected = read_log(reference.results / "3d_coarse" / "fold_0" / "training_log.csv")

    resumed = fresh_copy(tiny_dataset, tmp_path / "b")
    log_path = resumed.results / "3d_coarse" / "fold_0" / "training_log.csv"
    process = subprocess.Popen(_train_command(resumed))
    while not (log_path.exists() and len(read_log(log_path)) >= 1):
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(read_log(log_path)) < 3
    assert subprocess.run(_train_command(resumed, "--continue"), capture_output=True).returncode == 0
    got = read_log(log_path)
    assert len(got) == 3
    for a, b in zip(expected, got):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-5)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_ranks_identical(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(worker), str(paths.root), str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the ranks trained: their weights differ from a fresh network with the same seed
    torch.manual_seed(0)
    from kitsseg.network.vbnet import VBNet
    from kitsseg.planning import load_plans
    fresh = VBNet(load_plans(paths.plans).stage("3d_coarse").network).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)


def test_time_budget_stops_mid_epoch_and_schedules_by_the_clock(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage="3d_coarse", fold="0", iters_per_epoch=100_000, val_iters=1, lr=1e-2, device="cpu",
                         num_workers=0, augment_strength=0.0, time_budget_min=0.1)
    start = time.perf_counter()
    out = train(paths, config, quiet=True)
    assert time.perf_counter() - start < 40  # 6 s of training, then validation and saving
    log = read_log(out / "training_log.csv")
    assert len(log) == 1  # the one long epoch was cut when the budget ran out
    assert float(log[0]["lr"]) < 0.05 * config.lr  # the learning rate decayed with the clock


def test_no_flags_train_the_plans_recipe_and_flags_are_recorded(tiny_dataset, tmp_path):
    """kits_train STAGE FOLD runs plans.json's recipe; a flag overrides it and train_config.json says so;
    --continue refuses a checkpoint trained with another recipe, naming the difference."""
    paths = fresh_copy(tiny_dataset, tmp_path)
    data = json.loads(paths.plans.read_text())
    data["stages"]["3d_coarse"]["training"] = {"loss": "gdice", "lr": 0.004, "epochs": 1, "iters_per_epoch": 2,
                                               "val_iters": 1, "augment_strength": 0.0, "num_workers": 0,
                                               "time_budget_min": 0.0, "lesion_fraction": 0.2,
                                               "outside_fraction": 0.0}
    paths.plans.write_text(json.dumps(data))
    base = [sys.executable, "-m", "kitsseg.cli", "train", "3d_coarse", "0", "--data-root", str(paths.root),
            "-d", paths.name, "--device", "cpu"]
    first = subprocess.run(base, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "one epoch takes about" in first.stdout + first.stderr  # the estimate after the first epoch
    written = json.loads((paths.results / "3d_coarse" / "fold_0" / "train_config.json").read_text())
    assert {k: written[k] for k in data["stages"]["3d_coarse"]["training"]} == data["stages"]["3d_coarse"]["training"]
    assert written["overrides"] == []
    refused = subprocess.run([*base, "--continue", "--lr", "0.01", "--epochs", "1"], capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "cannot continue with another recipe: lr 0.004 (checkpoint) vs 0.01 (this run); run with the "
        "checkpoint's settings, or without --continue to start afresh")
    resumed = subprocess.run([*base, "--continue", "--epochs", "2", "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 1 and "epochs 1 (checkpoint) vs 2 (this run)" in resumed.stderr
    overridden = subprocess.run([*base, "--lr", "0.01", "--quiet"], capture_output=True, text=True)
    assert overridden.returncode == 0, overridden.stderr[-2000:]
    written = json.loads((paths.results / "3d_coarse" / "fold_0" / "train_config.json").read_text())
    assert written["lr"] == 0.01 and written["overrides"] == ["lr"] and written["loss"] == "gdice"
