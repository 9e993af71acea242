"""Tune kitsseg's training recipe on the validation split, one change at a time.

Each variant below changes one thing against the baseline recipe (the preset's, from plans.json) and is trained with the same budget on the first 24 TRAIN_CASES, then scored on
the other 6 (VALIDATION_CASES); the held-out TEST_CASES are never used. Rendered images:
synthetic intensities on real KiTS19 geometry, the figures compare recipes only. Greedy: once a
change is kept, `--base` tests the remaining ones on top of it (rows named "base+variant").

    python benchmarks/tune_recipe.py --workdir bench_work/tuning --budget-min 10
    python benchmarks/tune_recipe.py --workdir bench_work/tuning --base lr_1e-2 --variants lesion_0.5 ...
    python benchmarks/tune_recipe.py --workdir bench_work/tuning --variants lr_1e-2 baseline --tag _repeat
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "baseline": [],
    "lr_1e-2": ["--lr", "1e-2"],
    "lr_1e-3": ["--lr", "1e-3"],
    "lesion_0.5": ["--lesion-fraction", "0.5"],
    "augment_0.5": ["--augment", "0.5"],
    "coarse_share_0.15": ["--coarse-share", "0.15"],
    "loss_gdice": ["--loss", "gdice"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work") / "tuning")
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per variant (default: 10)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--base", choices=VARIANTS, default="baseline", help="a kept variant that the others are "
                        "applied on top of (default: the baseline recipe)")
    parser.add_argument("--tag", default="", help="suffix for the row names, e.g. _repeat to rerun a variant "
                        "unchanged and see the run-to-run spread")
    parser.add_argument("-np", "--workers", type=int, default=2)
    args = parser.parse_args()
    bench = Path(__file__).with_name("bench_accuracy.py")
    for name in args.variants:
        row = (name if args.base in ("baseline", name) else f"{args.base}+{name}") + args.tag
        subprocess.run([sys.executable, bench, "--workdir", args.workdir, "--split", "validation", "--methods",
                        "kitsseg", "--name", row, "--budget-min", str(args.budget_min), "-np", str(args.workers),
                        *VARIANTS[args.base], *VARIANTS[name]], check=True, stdout=subprocess.DEVNULL)
    print("| variant | recipe | budget min | kidney Dice | tumour Dice | KiTS19 composite | train wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in json.loads((args.workdir / "results.json").read_text()):
        fine = r["recipe"].get("3d_fine", r["recipe"])  # rows before the recipe moved into plans are flat
        recipe = " ".join(f"{k}={fine[k]}" for k in ("loss", "lr", "lesion_fraction", "augment_strength") if k in fine)
        print(f"| {r['method']} | {recipe} | {r['budget_min']:g} | {r['kidney_dice']:.3f} | {r['tumor_dice']:.3f} | "
              f"{r['composite_kits19']:.3f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
