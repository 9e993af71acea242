"""Scale rehearsal: the README's KiTS19 block on rendered KiTS19 cases in the official layout.

Renders `--cases` KiTS19 label maps with ../shared/bench/render_ct.py (case_00000 onwards plus
the five largest scans; synthetic intensities, real geometry) and `--test-cases` more whose
segmentation is left out of the official-layout folder (they play the 90 test images). Then it
runs the README's commands with the README's flags (KITSSEG_DATA set, as the README exports it):

    kits_convert kits SRC -d KiTS19
    kits_plan_and_preprocess -d KiTS19 -np 2
    kits_train 3d_coarse 0 -d KiTS19 / kits_train 3d_fine 0 -d KiTS19   (+ --epochs 1 --iters-per-epoch N
                                                                       --val-iters 1: a fixed number of
                                                                       iterations, the one departure)
    kits_crossval -d KiTS19 -f 0            (fold 0's validation cases predicted and scored)
    kits_predict -i RAW/imagesTs -o predictions -d KiTS19
    kits_evaluate -r LABELS -p predictions  (the test cases' own label maps, kept aside)

`--preset plans/cpu.json` rehearses the README's CPU alternative instead: planning with that preset
and `kits_train STAGE 0 -d KiTS19` with no other flag (each stage trains for the preset's wall-clock
budget), in WORKDIR/scale_<preset name> (scale_cpu).

Each step: wall time, peak PSS (and RSS) summed over the process tree, disk written under KITSSEG_DATA.
Training speed per stage (benchmarks/bench_train.py on the preprocessed cases, the plans' batch
sizes and loader workers): the step rate, the loader's batch rate, and the README loop's
projected time (5 folds x planned iterations / step rate). Prints a Markdown report.

    python benchmarks/bench_scale.py [--workdir bench_work] [--cases 100] [--test-cases 5]
                                     [--iterations 5] [--seconds 60] [--after-training] [--preset P]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import disk_bytes, git_commit, machine_description, rendered_kits_source, run_measured_tree  # noqa: E402

HERE = Path(__file__).resolve()
LARGEST_SCANS = ["case_00059", "case_00093", "case_00005", "case_00156", "case_00151"]  # by voxel count
FOLDS = 5
NNUNET_DISK_MB_PER_CASE = 48  # nnU-Net v2 3d_fullres + 3d_lowres preprocessed, rendered KiTS19, bench_preprocess.py


def case_lists(num_cases: int, num_test: int) -> tuple[list[str], list[str]]:
    """Labelled cases (the first ids plus the five largest scans) and the test cases after them."""
    labelled = [f"case_{i:05d}" for i in range(num_cases)]
    labelled += [c for c in LARGEST_SCANS if c not in labelled]
    test = [f"case_{i:05d}" for i in range(200, 200 + num_test)]
    return labelled, test


def official_layout(rendered: Path, target: Path, labelled: list[str], test: list[str]) -> None:
    """`target/case_X/imaging.nii.gz` for every case, `segmentation.nii.gz` for the labelled ones only."""
    for case in labelled + test:
        folder = target / case
        folder.mkdir(parents=True, exist_ok=True)
        names = ["imaging.nii.gz"] + (["segmentation.nii.gz"] if case in labelled else [])
        for name in names:
            if not (folder / name).exists():
                (folder / name).symlink_to((rendered / case / name).resolve())


def run_step(name: str, command: list[str], env: dict, data_root: Path, logs: Path) -> dict:
    before = disk_bytes(data_root) if data_root.exists() else 0
    measured = run_measured_tree(command, env=env, log=logs / f"{name}.log")
    after = disk_bytes(data_root) if data_root.exists() else 0
    code = measured.exit_code
    row = {"step": name, "command": " ".join(command), "seconds": measured.seconds,
           "peak_pss_gb": measured.peak_pss_bytes / 1e9, "peak_rss_gb": measured.peak_rss_bytes / 1e9,
           "disk_mb": (after - before) / 1e6, "exit": code}
    print(f"  {name}: {row['seconds']:.0f} s, peak PSS {row['peak_pss_gb']:.2f} GB (RSS {row['peak_rss_gb']:.2f}), "
          f"disk {row['disk_mb']:.0f} MB, exit {code}", flush=True)
    if code:
        raise SystemExit(f"{name} failed (exit {code}), see {logs / (name + '.log')}")
    return row


def training_speed(env: dict, data_root: Path, seconds: float, logs: Path) -> list[dict]:
    """bench_train.py's rates per stage on the preprocessed cases, at the plans' batch sizes and workers."""
    log = logs / "bench_train.log"
    command = [sys.executable, str(HERE.parent / "bench_train.py"), "--data-root", str(data_root), "-d", "KiTS19",
               "--device", "cpu", "--seconds", str(seconds), "--json"]
    with open(log, "w") as out:
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return json.loads(log.read_text().strip().splitlines()[-1])


def planned_iterations(data_root: Path) -> dict[str, int]:
    plans = json.loads((data_root / "preprocessed" / "KiTS19" / "plans.json").read_text())
    return {name: stage["training"]["epochs"] * stage["training"]["iters_per_epoch"]
            for name, stage in plans["stages"].items()}


def inference_steps(run_dir: Path, rendered: Path, test: list[str], env: dict, data_root: Path, logs: Path) -> list:
    """kits_crossval on fold 0, kits_predict on the test images, kits_evaluate against their kept-aside labels."""
    rows = [run_step("crossval fold 0", ["kits_crossval", "-d", "KiTS19", "-f", "0"], env, data_root, logs)]
    predictions = run_dir / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    rows.append(run_step("predict test images", ["kits_predict", "-i", str(data_root / "raw" / "KiTS19" / "imagesTs"),
                                                 "-o", str(predictions), "-d", "KiTS19"], env, data_root, logs))
    labels = run_dir / "test_labels"
    labels.mkdir(exist_ok=True)
    for case in test:
        if not (labels / f"{case}.nii.gz").exists():
            (labels / f"{case}.nii.gz").symlink_to((rendered / case / "segmentation.nii.gz").resolve())
    rows.append(run_step("evaluate test images", ["kits_evaluate", "-r", str(labels), "-p", str(predictions)], env,
                         data_root, logs))
    return rows


def report(rows: list[dict], speed: list[dict], iterations: dict[str, int], num_cases: int, num_test: int) -> str:
    lines = [f"Scale rehearsal on {machine_description()}, commit {git_commit()}: {num_cases} labelled + "
             f"{num_test} test cases rendered from KiTS19 label maps (synthetic intensities).", "",
             "| step | wall s | peak PSS GB (RSS), process tree | disk written MB | command |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['seconds']:.0f} | {r['peak_pss_gb']:.2f} ({r['peak_rss_gb']:.2f}) | "
                     f"{r['disk_mb']:.0f} | `{r['command']}` |")
    pre = next((r for r in rows if r["step"] == "plan_and_preprocess"), None)
    if pre is None:
        return "\n".join(lines)
    lines += ["", f"Plan + preprocess: {pre['seconds'] / num_cases:.1f} s per labelled case (the only ones it "
              "preprocesses), "
              f"{pre['disk_mb'] / num_cases:.1f} MB per labelled case (nnU-Net v2: about "
              f"{NNUNET_DISK_MB_PER_CASE} MB per case, about 47 s per case on the reference machine)."]
    if not speed:
        return "\n".join(lines)
    lines += ["", "| stage | patch | batch | workers | step it/s | loader batches/s | loader/step | planned iterations "
              "| README loop (5 folds) at this step rate, h |", "|---|---|---|---|---|---|---|---|---|"]
    for s in speed:
        hours = FOLDS * iterations[s["stage"]] / s["steps_per_s"] / 3600
        lines.append(f"| {s['stage']} | {s['patch']} | {s['batch_size']} | {s['num_workers']} | "
                     f"{s['steps_per_s']:.3f} | {s['loader_per_s']:.2f} | {s['loader_per_s'] / s['steps_per_s']:.1f}x | "
                     f"{iterations[s['stage']]} | {hours:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work"))
    parser.add_argument("--cases", type=int, default=100, help="labelled cases from case_00000 (plus the 5 largest)")
    parser.add_argument("--test-cases", type=int, default=5, help="cases whose label is left out (imagesTs)")
    parser.add_argument("--iterations", type=int, default=5, help="training iterations per stage for fold 0")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time per training rate")
    parser.add_argument("--skip-training", action="store_true", help="stop after plan and preprocess")
    parser.add_argument("--after-training", action="store_true",
                        help="reuse the data and fold-0 models of an earlier run in WORKDIR/scale (or scale_PRESET): "
                             "only kits_crossval, "
                             "kits_predict and kits_evaluate")
    parser.add_argument("--preset", type=Path, help="plan with this preset (the README's CPU alternative: "
                        "plans/cpu.json) and train each stage with no flags, for the preset's time budget")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    labelled, test = case_lists(args.cases, args.test_cases)
    rendered, _ = rendered_kits_source(workdir, "scale_rendered", labelled + test)
    run_dir = workdir / ("scale" if args.preset is None else f"scale_{args.preset.stem}")
    source, data_root, logs = run_dir / "kits19" / "data", run_dir / "kitsseg_data", run_dir / "logs"
    preset = [] if args.preset is None else ["--preset", str(args.preset.resolve())]
    env = {**os.environ, "KITSSEG_DATA": str(data_root)}
    logs.mkdir(parents=True, exist_ok=True)
    rows, speed, iterations = [], [], {}
    if not args.after_training:
        shutil.rmtree(data_root, ignore_errors=True)
        official_layout(rendered, source, labelled, test)
        print(f"{len(labelled)} labelled + {len(test)} test cases; data in {data_root}", flush=True)
        rows = [run_step("convert", ["kits_convert", "kits", str(source), "-d", "KiTS19"], env, data_root, logs),
                run_step("plan_and_preprocess", ["kits_plan_and_preprocess", "-d", "KiTS19", "-np", "2", *preset],
                         env, data_root, logs)]
        iterations = planned_iterations(data_root)
    if not args.after_training and not args.skip_training:
        if not preset:  # a preset trained by wall clock has no planned iteration count to project
            speed = training_speed(env, data_root, args.seconds, logs)
        fixed = [] if preset else ["--epochs", "1", "--iters-per-epoch", str(args.iterations), "--val-iters", "1"]
        for stage in ("3d_coarse", "3d_fine"):
            rows.append(run_step(f"train {stage} fold 0", ["kits_train", stage, "0", "-d", "KiTS19", *fixed], env,
                                 data_root, logs))
    if args.after_training or not args.skip_training:
        rows += inference_steps(run_dir, rendered, test, env, data_root, logs)
    text = report(rows, speed, iterations, len(labelled), len(test))
    (run_dir / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
