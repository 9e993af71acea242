"""Preprocessing benchmark: kits_plan_and_preprocess vs nnUNetv2_plan_and_preprocess, side by side.

Renders 10 KiTS19 cases with ../shared/bench/render_ct.py (synthetic intensities, real
geometry), converts them, then times both tools with the same number of workers and
reports wall time, peak RSS summed over all processes, and disk size of the output.

    python benchmarks/bench_preprocess.py [--workdir bench_work] [-np 2] [--skip-nnunet]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import disk_bytes, machine_description, rendered_kits_source, run_measured  # noqa: E402

CASES = ["case_00002", "case_00003", "case_00004", "case_00006", "case_00007",
         "case_00008", "case_00009", "case_00010", "case_00011", "case_00012"]
NNUNET_ID = 501


def _kitsseg(workdir: Path, workers: int) -> dict:
    root = workdir / "kitsseg_data"
    shutil.rmtree(root / "preprocessed", ignore_errors=True)
    command = ["kits_plan_and_preprocess", "--data-root", str(root), "-np", str(workers), "--quiet"]
    seconds, rss, code = run_measured(command, log=workdir / "kitsseg.log")
    if code:
        raise SystemExit(f"kits_plan_and_preprocess failed, see {workdir / 'kitsseg.log'}")
    rerun, _, _ = run_measured(command, log=workdir / "kitsseg_rerun.log")
    return {"seconds": seconds, "rss": rss, "disk": disk_bytes(root / "preprocessed"), "rerun": rerun}


def _nnunet(workdir: Path, workers: int) -> dict | None:
    if shutil.which("nnUNetv2_plan_and_preprocess") is None:
        return None
    base = workdir / "nnunet"
    shutil.rmtree(base, ignore_errors=True)
    raw = base / "raw" / f"Dataset{NNUNET_ID}_KiTS19"
    raw.parent.mkdir(parents=True)
    raw.symlink_to((workdir / "kitsseg_data" / "raw" / "KiTS19").resolve())  # same format
    env = {**os.environ, "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
           "nnUNet_results": str(base / "results")}
    command = ["nnUNetv2_plan_and_preprocess", "-d", str(NNUNET_ID), "-c", "3d_fullres", "3d_lowres",
               "-np", str(workers), str(workers), "-npfp", str(workers)]
    seconds, rss, code = run_measured(command, env=env, log=workdir / "nnunet.log")
    if code:
        raise SystemExit(f"nnUNetv2_plan_and_preprocess failed, see {workdir / 'nnunet.log'}")
    return {"seconds": seconds, "rss": rss, "disk": disk_bytes(base / "preprocessed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work"))
    parser.add_argument("-np", "--workers", type=int, default=2)
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args()
    _, source = rendered_kits_source(args.workdir, "kits_source", CASES)
    subprocess.run(["kits_convert", "kits", str(source), "--data-root", str(args.workdir / "kitsseg_data"),
                    "--quiet"], check=True)

    ours = _kitsseg(args.workdir, args.workers)
    theirs = None if args.skip_nnunet else _nnunet(args.workdir, args.workers)
    print(f"\nPreprocessing of {len(CASES)} rendered KiTS19 cases, -np {args.workers}, on {machine_description()}")
    print(f"{'tool':<42} {'wall s':>8} {'peak RSS GB':>12} {'disk MB':>9}")
    print(f"{'kits_plan_and_preprocess':<42} {ours['seconds']:8.1f} {ours['rss'] / 1e9:12.2f} {ours['disk'] / 1e6:9.1f}")
    if theirs:
        print(f"{'nnUNetv2_plan_and_preprocess (fullres+lowres)':<42} {theirs['seconds']:8.1f} "
              f"{theirs['rss'] / 1e9:12.2f} {theirs['disk'] / 1e6:9.1f}")
        print(f"{'ratio nnU-Net / kitsseg':<42} {theirs['seconds'] / ours['seconds']:8.1f}x "
              f"{theirs['rss'] / ours['rss']:11.1f}x {theirs['disk'] / ours['disk']:8.1f}x")
    else:
        print("nnU-Net v2 not run (install with: pip install '.[bench]', or pass no --skip-nnunet)")
    print(f"kitsseg re-run (everything up to date): {ours['rerun']:.1f} s "
          f"({100 * ours['rerun'] / ours['seconds']:.0f}% of the first run)")


if __name__ == "__main__":
    main()
