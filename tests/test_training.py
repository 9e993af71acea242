"""End-to-end training on tiny phantoms with a tiny VB-Net (CPU, seconds)."""
import csv
import json
import os
import re
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
from kitsseg.training.trainer import TrainConfig, Trainer, output_dir, poly_lr, train

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


def test_deep_supervision_planned_in_plans_trains_and_predicts_with_the_full_resolution_head(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    plans = json.loads(paths.plans.read_text())
    plans["stages"]["3d_fine"]["network"]["deep_supervision_levels"] = 2
    paths.plans.write_text(json.dumps(plans))
    config = TrainConfig(stage="3d_fine", fold="0", epochs=4, iters_per_epoch=8, val_iters=2, lr=3e-3,
                         device="cpu", num_workers=0, augment_strength=0.0)
    out = train(paths, config, quiet=True)
    log = read_log(out / "training_log.csv")
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    state = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert {"aux_heads.0.weight", "aux_heads.1.weight"} <= set(state["state_dict"])
    network, _, stage_plan = network_from_checkpoint(out / "checkpoint_final.pt")
    side = stage_plan.network.stride
    with torch.no_grad():
        logits = network.eval()(torch.zeros(1, 1, side, side, side))
    assert logits.shape == (1, stage_plan.num_classes, side, side, side)


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
    before = read_log(log_path)
    assert 1 <= len(before) < 3
    command = [arg for arg in _train_command(resumed, "--continue") if arg != "--quiet"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    # it went on from the checkpoint: the first epoch it ran is the next one, and the killed run's rows are
    # kept as they were (their wall-clock seconds included, which a fresh start would rewrite)
    assert re.findall(r"^epoch (\d+):", again.stdout, re.MULTILINE)[0] == str(len(before))
    got = read_log(log_path)
    assert got[:len(before)] == before and len(got) == 3
    for a, b in zip(expected, got):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-5)


def run_ddp_worker(paths: DatasetPaths, out: Path, *mode: str) -> tuple[dict, dict]:
    """Two CPU ranks (gloo) of tests/ddp_worker.py; each rank's saved parameters and step count."""
    worker = Path(__file__).with_name("ddp_worker.py")
    repo = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                str(worker), str(paths.root), str(out), *mode], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
                                   filter(None, [repo, os.environ.get("PYTHONPATH")]))})
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the ranks too, which a hang leaves behind
        process.communicate()
        pytest.fail("the DDP ranks did not finish within 120 s (a rank waiting for the other?)")
    assert process.returncode == 0, stderr[-2000:]
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_ranks_identical(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    a, b = run_ddp_worker(paths, tmp_path)
    assert a.keys() == b.keys() and int(a.pop("steps")) == int(b.pop("steps")) == 2
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the ranks trained: their weights differ from a fresh network with the same seed
    torch.manual_seed(0)
    from kitsseg.network.vbnet import VBNet
    from kitsseg.planning import load_plans
    fresh = VBNet(load_plans(paths.plans).stage("3d_coarse").network).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)


@pytest.mark.slow
def test_ddp_ranks_stop_together_on_rank_zeros_clock(tiny_dataset, tmp_path):
    """Under --time-budget each rank read its own clock: a rank whose clock ran ahead stopped alone and
    left the other waiting in the gradient all-reduce. The stop (and the lr) follow rank 0's clock."""
    paths = fresh_copy(tiny_dataset, tmp_path)
    a, b = run_ddp_worker(paths, tmp_path, "time-budget")
    steps = int(a.pop("steps"))
    assert int(b.pop("steps")) == steps > 1  # rank 1's own clock would have stopped it after one step
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_time_budget_stops_mid_epoch_and_schedules_by_the_clock(tiny_dataset, tmp_path):
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage="3d_coarse", fold="0", iters_per_epoch=100_000, val_iters=1, lr=1e-2, device="cpu",
                         num_workers=0, augment_strength=0.0, time_budget_min=0.1)
    start = time.perf_counter()
    out = train(paths, config, quiet=True)
    assert time.perf_counter() - start < 120  # 6 s of training, then validation and saving (generous: loaded CI)
    log = read_log(out / "training_log.csv")
    assert len(log) == 1  # the one long epoch was cut when the budget ran out
    # the learning rate decayed with the clock: by the steps (100 x 100000 planned) it would still be
    # above 0.999 x lr; the last step starts past half the budget even when steps take seconds
    assert float(log[0]["lr"]) < 0.5 * config.lr


def stop_after_first_epoch(paths: DatasetPaths, config: TrainConfig) -> dict:
    """One epoch and its checkpoint, then the run ends as a killed one would (no final checkpoint);
    returns the epoch's log row."""
    trainer = Trainer(paths, config, quiet=True)
    trainer.started = time.perf_counter()
    try:
        train_loss = trainer._train_epoch()
        trainer._end_epoch(train_loss, *trainer._validate_epoch(), 1.0)
    finally:
        if hasattr(trainer.batches, "_finish"):
            trainer.batches._finish()
    return trainer.log[0]


def test_resume_with_loader_workers(tiny_dataset, tmp_path):
    """Worker processes start with the resumed epoch's seed; the run goes on at epoch 1 from the checkpoint
    and keeps the first session's row."""
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage="3d_coarse", fold="0", epochs=2, iters_per_epoch=2, val_iters=1, device="cpu",
                         num_workers=2, augment_strength=0.0)
    first = stop_after_first_epoch(paths, config)
    out = output_dir(paths, "3d_coarse", "0")
    assert torch.load(out / "checkpoint_latest.pt", weights_only=True)["epoch"] == 1
    resumed = Trainer(paths, config, resume=True, quiet=True)
    assert resumed.epoch == 1 and resumed.log == [first]
    resumed.fit()
    log = read_log(out / "training_log.csv")
    assert [row["epoch"] for row in log] == ["0", "1"] and float(log[0]["seconds"]) == 1.0
    assert torch.load(out / "checkpoint_final.pt", weights_only=True)["epoch"] == 2


def test_resume_with_a_time_budget_counts_the_earlier_sessions_time(tiny_dataset, tmp_path):
    """The checkpoint says 5.99 s of a 6 s budget are spent: the resumed run trains one step at the end of
    the schedule and stops (counting from zero it would train 6 s of 2-step epochs)."""
    paths = fresh_copy(tiny_dataset, tmp_path)
    config = TrainConfig(stage="3d_coarse", fold="0", iters_per_epoch=2, val_iters=1, lr=1e-2, device="cpu",
                         num_workers=0, augment_strength=0.0, time_budget_min=0.1)
    stop_after_first_epoch(paths, config)
    latest = output_dir(paths, "3d_coarse", "0") / "checkpoint_latest.pt"
    state = torch.load(latest, weights_only=True)
    state["seconds"] = 5.99
    torch.save(state, latest)
    out = train(paths, config, resume=True, quiet=True)
    log = read_log(out / "training_log.csv")
    assert len(log) == 2 and float(log[1]["lr"]) < 0.05 * config.lr
    final = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert final["seconds"] >= 6.0
    assert int(final["optimizer"]["state"][0]["step"]) == 2 + 1  # the first session's two steps and one more


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
