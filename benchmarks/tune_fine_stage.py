"""Tune the fine stage's recipe on a validation set rich in small tumours, with repeats.

The fine stage is trained on fold 0 = the first 24 TRAIN_CASES of bench_accuracy.py, each variant
once per seed (variants interleaved, so drift of the machine hits all alike), and the whole
cascade predicts 20 validation cases: the 6 VALIDATION_CASES and EXTRA_VALIDATION_CASES, 14 other
KiTS19 cases with tumours under 25 ml (neither training nor TEST_CASES). The coarse model is
shared by every run (`--coarse-model`, a trained 3d_coarse fold folder), so the differences are the
fine stage's. Rendered images: synthetic intensities on real KiTS19 geometry; the figures compare
recipes only.

    python benchmarks/tune_fine_stage.py --workdir bench_work/val16 \
        --coarse-model bench_work/acc16_s0/model_seed0/3d_coarse/fold_all --variants baseline crop_dice_ce

`--dataset kits23` trains on the KiTS23 split's first 24 training cases (with the cyst class) and
predicts its 6 validation cases plus the KiTS19 validation cases whose patients are not among the
KiTS23 split's training cases: the KiTS23 training cases hold almost no tumour under 10 ml, its
test cases many, and the KiTS19 cases bring small tumours. Its coarse model is trained once on the
same fold (`kits_train 3d_coarse 0 --data-root WORKDIR/data -d KiTS23 --time-budget 6.75`, after a
first call has prepared the data).

Variants are recipe flags of kits_train (VARIANTS) or changes of the fine stage in plans.json, its
network or its batch size (STAGE_VARIANTS, written for the run and restored after it); `--tta`
predicts with test-time mirroring; `--preset` or `--normalization` with another workdir tries another
plan (benchmarks/RESULTS.md: fine spacing 1.0 mm, entry 23).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import (DATASETS, REPO, TRAIN_CASES, VALIDATION_CASES, preprocess_command,  # noqa: E402
                            render, run)

EXTRA_VALIDATION_CASES = ["case_00018", "case_00019", "case_00075", "case_00076", "case_00077", "case_00082",
                          "case_00083", "case_00085", "case_00094", "case_00097", "case_00106", "case_00121",
                          "case_00127", "case_00129"]
VARIANTS = {"baseline": [], "crop_dice_ce": ["--loss", "crop_dice_ce"], "lesion_0.5": ["--lesion-fraction", "0.5"],
            "augment_0.5": ["--augment", "0.5"], "lr_1e-2": ["--lr", "1e-2"],
            "lesion_paste_0.5": ["--lesion-paste", "0.5"]}
STAGE_VARIANTS = {"bottleneck_16": {"network": {"bottleneck_min_channels": 16}},
                  "deep_supervision": {"network": {"deep_supervision_levels": 2}},
                  "batch_3": {"batch_size": 3},
                  "no_full_res_unit": {"network": {"up_blocks": [2, 2, 1, 0]}}}
DEFAULT_BUDGET_MIN = 18.0  # fine-stage minutes per run


def validation_cases(dataset: str) -> dict[str, Path]:
    """The validation cases and the label maps each is rendered from."""
    kits19 = {case: DATASETS["kits19"].labels_root for case in VALIDATION_CASES + EXTRA_VALIDATION_CASES}
    if dataset == "kits19":
        return kits19
    validation = DATASETS["kits23"].splits["validation"][1]
    kits23_patients = set(DATASETS["kits23"].splits["test"][0])  # KiTS23 reuses KiTS19's case ids per patient
    return {**{case: DATASETS["kits23"].labels_root for case in validation},
            **{case: root for case, root in kits19.items() if case not in kits23_patients}}


def prepare(workdir: Path, args: argparse.Namespace) -> Path:
    """Rendered cases, the raw training dataset, its preprocessing, fold 0 and the validation folder;
    returns the data root."""
    dataset = DATASETS[args.dataset]
    validation = validation_cases(args.dataset)
    linked = {p.name.removesuffix(".nii.gz") for p in (workdir / "val" / "labels").glob("*.nii.gz")}
    if linked - set(validation):  # before rendering: KiTS23 and KiTS19 share case ids
        raise SystemExit(f"{workdir}: its validation folder holds another dataset's cases; use another --workdir")
    train_cases = TRAIN_CASES if args.dataset == "kits19" else sum(dataset.splits["validation"], [])
    rendered = render(workdir, train_cases, args.workers, dataset.labels_root)
    rendered_by_source = {labels_root: render(workdir if labels_root == dataset.labels_root else workdir / "kits19",
                                              [c for c, r in validation.items() if r == labels_root], args.workers,
                                              labels_root)
                          for labels_root in set(validation.values())}  # each dataset's own folder: ids repeat
    root = workdir / "data"
    if not (root / "raw" / dataset.name / "dataset.json").exists():
        source = workdir / "train_source"
        source.mkdir(exist_ok=True)
        for case in train_cases:
            if not (source / case).exists():
                (source / case).symlink_to((rendered / case).resolve())
        run(["kits_convert", "kits", source, "--data-root", root, "-d", dataset.name, "--quiet"],
            workdir / "convert.log")
    run(preprocess_command(args, ["--data-root", root, "-d", dataset.name]), workdir / "preprocess.log")
    (root / "preprocessed" / dataset.name / "splits_final.json").write_text(
        json.dumps([{"train": train_cases[:24], "val": train_cases[24:]}], indent=1))
    for case, labels_root in validation.items():
        case_folder = rendered_by_source[labels_root] / case
        for folder, name, source in (("images", f"{case}_0000.nii.gz", "imaging.nii.gz"),
                                     ("labels", f"{case}.nii.gz", "segmentation.nii.gz")):
            link = workdir / "val" / folder / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((case_folder / source).resolve())
    return root


@contextmanager
def fine_stage(root: Path, name: str, changes: dict):
    """Dataset `name`'s plans.json fine stage with `changes` while the block runs (the checkpoint keeps them)."""
    plans_path = root / "preprocessed" / name / "plans.json"
    original = plans_path.read_text()
    plans = json.loads(original)
    apply_stage_changes(plans["stages"]["3d_fine"], changes)
    plans_path.write_text(json.dumps(plans, indent=1))
    try:
        yield
    finally:
        plans_path.write_text(original)


def apply_stage_changes(stage: dict, changes: dict) -> None:
    """Set each changed field of a plans.json stage; a dict value updates that field's dict (the network)."""
    for field, value in changes.items():
        if isinstance(value, dict):
            stage[field].update(value)
        else:
            stage[field] = value


def run_name(variant: str, seed: int, budget_min: float, tta: bool) -> str:
    """The run's models/pred/scores folder name; a budget other than the default's is part of it, so
    shorter runs never replace the 18-min ones."""
    budget = "" if budget_min == DEFAULT_BUDGET_MIN else f"_{budget_min:g}min"
    return f"{variant}_s{seed}{budget}" + ("_tta" if tta else "")


def run_variant(workdir: Path, root: Path, name: str, variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train the fine stage of fold 0, predict and score the validation folder; kits_evaluate's means."""
    dataset = DATASETS[args.dataset].name
    trained = root / "results" / dataset / "3d_fine" / "fold_0"
    shutil.rmtree(trained, ignore_errors=True)
    with fine_stage(root, dataset, STAGE_VARIANTS.get(variant, {})):
        train_s = run(["kits_train", "3d_fine", "0", "--data-root", root, "-d", dataset, "--time-budget",
                       args.budget_min, "--epochs", 10 ** 6, "--seed", seed, *VARIANTS.get(variant, []), "--quiet"],
                      workdir / f"train_{name}.log")
    models = workdir / "models" / name
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(args.coarse_model.resolve(), models / "3d_coarse" / "fold_0")
    shutil.copytree(trained, models / "3d_fine" / "fold_0")
    pred, scores = workdir / "pred" / name, workdir / "scores" / name
    shutil.rmtree(pred, ignore_errors=True)
    run(["kits_predict", "-i", workdir / "val" / "images", "-o", pred, "-m", models, "-f", "0", "--device", "cpu",
         "--quiet", *(["--tta"] if args.tta else [])], workdir / f"predict_{name}.log")
    run(["kits_evaluate", "-r", workdir / "val" / "labels", "-p", pred, "-o", scores, "--quiet"],
        workdir / f"evaluate_{name}.log")
    mean = json.loads((scores / "summary.json").read_text())["mean"]
    return {"run": name, "seed": seed, "train_s": train_s, **mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work") / "tune_fine")
    parser.add_argument("--dataset", choices=list(DATASETS), default="kits19",
                        help="the training cases: KiTS19's, or KiTS23's with the cyst class (its own --workdir)")
    parser.add_argument("--coarse-model", type=Path, required=True, help="a trained 3d_coarse fold folder")
    parser.add_argument("--budget-min", type=float, default=DEFAULT_BUDGET_MIN,
                        help=f"fine-stage minutes per run (default: {DEFAULT_BUDGET_MIN:g})")
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, *STAGE_VARIANTS],
                        default=["baseline", "crop_dice_ce"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="one run per variant and seed")
    parser.add_argument("--preset", default=str(REPO / "plans" / "cpu.json"),
                        help="plans preset (another fine spacing needs its own --workdir: the cache is built once)")
    parser.add_argument("--normalization", choices=["window", "percentile"],
                        help="CT normalisation (default: the preset's); both stages see it, so --coarse-model must "
                             "be trained on it, and the cache needs its own --workdir")
    parser.add_argument("--tta", action="store_true", help="predict with kits_predict --tta")
    parser.add_argument("-np", "--workers", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = prepare(workdir, args)
    results = workdir / "results.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    for seed in args.seeds:
        for variant in args.variants:
            name = run_name(variant, seed, args.budget_min, args.tta)
            rows = [r for r in rows if r["run"] != name] + [run_variant(workdir, root, name, variant, seed, args)]
            results.write_text(json.dumps(rows, indent=2))
    print("| run | seed | kidney Dice | tumour Dice | KiTS19 composite | train wall s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | {r['kidney_dice']:.3f} | {r['tumor_dice']:.3f} | "
              f"{r['composite_kits19']:.3f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
