"""SIGKILL at random moments, then restart: every command completes, and no partial npz,
checkpoint or prediction is ever taken as valid (all outputs are written atomically and a
restart removes a killed run's temporary files)."""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg.checkpoint import load_checkpoint
from kitsseg.io import check_nifti_complete
from kitsseg.paths import DatasetPaths
from kitsseg.preprocessing import load_npz

pytestmark = pytest.mark.slow
TRIALS = 3


def kill_after(command, seconds: float) -> bool:
    """Start `command`, SIGKILL it after `seconds`; return whether it was still running then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def kill_after_new_output(command, out: Path, seconds: float) -> None:
    """Start `command`, SIGKILL it `seconds` after a prediction appears in `out` that was not there before
    (event-driven, so a slow start-up on a loaded machine cannot push every kill past the last case)."""
    before = set(out.glob("c*.nii.gz"))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and not set(out.glob("c*.nii.gz")) - before:
            time.sleep(0.01)
        time.sleep(seconds)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def timed_run(command) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return time.perf_counter() - start


# kits_plan_and_preprocess whose third .npz write stops half-way (flushed, then sleeping): the test kills it there
STALLED_WRITE = """
import io, sys, time
from pathlib import Path
import numpy as np
from kitsseg.cli import plan_and_preprocess_main

marker, writes, original = Path(sys.argv[1]), [], np.savez_compressed

def half_then_stall(file, **arrays):
    writes.append(file.name)
    if len(writes) < 3:
        return original(file, **arrays)
    data = io.BytesIO()
    original(data, **arrays)
    file.write(data.getvalue()[: len(data.getvalue()) // 2])
    file.flush()
    marker.write_text(file.name)
    time.sleep(600)

np.savez_compressed = half_then_stall
sys.exit(plan_and_preprocess_main(sys.argv[2:]))
"""


def npz_contents(folder):
    """{relative path: (image, label)} of every .npz under a final name (not a temporary file)."""
    found = {}
    for path in sorted(p for p in folder.rglob("*.npz") if not p.name.startswith(".tmp-")):
        image, label = load_npz(path)
        found[str(path.relative_to(folder))] = (image, label)
    return found


def test_preprocessing(phantom_raw, tmp_path):
    """Killed while an .npz is half written: no half file under a final name, and the rerun equals an
    uninterrupted run, array for array."""
    arguments = ["-d", "Phantom", "-np", "1", "--quiet"]
    reference = DatasetPaths(tmp_path / "reference", "Phantom")
    shutil.copytree(phantom_raw, reference.raw)
    timed_run([sys.executable, "-m", "kitsseg.cli", "plan_and_preprocess", "--data-root", str(reference.root),
               *arguments])
    paths = DatasetPaths(tmp_path / "killed", "Phantom")
    shutil.copytree(phantom_raw, paths.raw)
    marker = tmp_path / "writing"
    process = subprocess.Popen([sys.executable, "-c", STALLED_WRITE, str(marker), "--data-root", str(paths.root),
                                *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no third .npz write began"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    half_written = Path(marker.read_text())
    assert half_written.name.startswith(".tmp-") and half_written.exists()  # the kill landed during that write
    assert len(npz_contents(paths.preprocessed)) == 2  # the two finished writes, each loadable
    timed_run([sys.executable, "-m", "kitsseg.cli", "plan_and_preprocess", "--data-root", str(paths.root),
               *arguments])
    assert not list(paths.preprocessed.rglob(".tmp-*"))  # the killed run's temporary file is gone
    expected, got = npz_contents(reference.preprocessed), npz_contents(paths.preprocessed)
    assert sorted(got) == sorted(expected)
    for name, (image, label) in expected.items():
        np.testing.assert_array_equal(got[name][0], image)
        np.testing.assert_array_equal(got[name][1], label)


def _train_command(paths, *extra):
    return [sys.executable, "-m", "kitsseg.cli", "train", "3d_coarse", "0", "--data-root", str(paths.root),
            "-d", paths.name, "--epochs", "8", "--iters-per-epoch", "4", "--val-iters", "1", "--device", "cpu",
            "--num-workers", "0", "--seed", "5", "--quiet", "--continue", *extra]


def test_training(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset.root, tmp_path / "root")
    paths = DatasetPaths(tmp_path / "root", tiny_dataset.name)
    out = paths.results / "3d_coarse" / "fold_0"
    rng = np.random.default_rng(1)
    killed, kept = 0, []

    def log_rows() -> list[str]:
        return (out / "training_log.csv").read_text().splitlines() if (out / "training_log.csv").exists() else []

    for _ in range(TRIALS):  # each start continues from the last checkpoint (or starts afresh)
        killed += kill_after(_train_command(paths), rng.uniform(3.0, 9.0))
        for checkpoint in out.glob("checkpoint_*.pt"):
            assert load_checkpoint(checkpoint)["epoch"] >= 1
        assert log_rows()[:len(kept)] == kept  # earlier sessions' rows, wall-clock seconds included, are kept
        kept = log_rows()
    assert killed >= 2, "training ended before most kills: make the run longer"
    if len(kept) <= 1:  # no epoch finished before the kills (a slow machine): kill a session once it has one
        process = subprocess.Popen(_train_command(paths), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(log_rows()) <= 1:
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kept = log_rows()
    timed_run(_train_command(paths))
    log = (out / "training_log.csv").read_text().splitlines()
    assert log[:len(kept)] == kept  # a --continue that started afresh would rewrite them
    assert [line.split(",")[0] for line in log[1:]] == [str(e) for e in range(8)]  # each epoch once, in order
    assert load_checkpoint(out / "checkpoint_final.pt")["epoch"] == 8
    assert not list(out.glob(".tmp-*"))


def test_prediction(phantom_raw, tiny_models, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(12):
        shutil.copy(phantom_raw / "imagesTr" / f"case_0000{k % 5}_0000.nii.gz", inputs / f"c{k:02d}.nii.gz")

    def command(out):
        return [sys.executable, "-m", "kitsseg.cli", "predict", "-i", str(inputs), "-o", str(out), "-m",
                str(tiny_models), "--device", "cpu", "--quiet"]

    seconds = timed_run(command(tmp_path / "reference"))
    reference = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                 for p in (tmp_path / "reference").glob("c*.nii.gz")}
    assert len(reference) == 12
    out = tmp_path / "out"
    rng = np.random.default_rng(2)
    killed_mid_run = 0
    for _ in range(TRIALS):  # kill at a random moment within a case after this start wrote its first output
        kill_after_new_output(command(out), out, rng.uniform(0.0, 1.0) * seconds / len(reference))
        killed_mid_run += 0 < len(list(out.glob("c*.nii.gz"))) < 12
        for path in out.glob("c*.nii.gz"):  # a finished name is a finished, correct file
            check_nifti_complete(path)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), reference[path.name])
    assert killed_mid_run >= 1, "no kill landed between the first and the last case"
    timed_run(command(out))
    assert sorted(p.name for p in out.glob("c*.nii.gz")) == sorted(reference)
    for name, labels in reference.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))), labels)
    assert not list(out.glob(".tmp-*"))
