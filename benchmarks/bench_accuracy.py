"""Accuracy at an equal wall-clock training budget: kitsseg vs nnU-Net v2 (3d_fullres, 3d_lowres).

Renders the KiTS19 cases below with ../shared/bench/render_ct.py (synthetic intensities on
real KiTS19 geometry: the figures compare methods, they are not KiTS19 results), trains each
method on TRAIN_CASES (fold 'all') for the same budget on the same device, predicts the
held-out TEST_CASES and scores them with kits_evaluate (KiTS19 and KiTS23 metrics).

    python benchmarks/bench_accuracy.py --workdir bench_work/accuracy --budget-min 45 --device cpu

`--dataset kits23` is the split with the cyst class, as the paper trained it: the 40 KiTS23 label
maps with cysts in ../shared/data/kits23-cysts, rendered the same way, the first 30 (by id) for
training and the last 10 for testing (validation: the first 24 and the next 6); its rows add the
Dice of the cyst label (3) beside the official KiTS23 regions.

Recipe tuning uses `--split validation` instead: it trains on the first 24 TRAIN_CASES and
scores the other 6 (VALIDATION_CASES), never touching TEST_CASES; `--name` keeps each kitsseg
variant as its own row (benchmarks/tune_recipe.py runs the variants).

kitsseg splits its budget between the coarse and the fine stage (--coarse-share). nnU-Net
trains with `nnUNetTrainer_TimeBudget` (benchmarks/nnunet_time_budget_trainer.py, its
default trainer cut by the clock). Planning and preprocessing are not part of the budget
(benchmarks/bench_preprocess.py times them). Both predict without test-time mirroring.
Needs `pip install -e ".[bench]"` for nnU-Net; methods can be chosen with --methods.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import RENDER_SCRIPT, SHARED, git_commit, machine_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the first 40 KiTS19 cases (by id) with at most 120 slices, to keep CPU runs affordable
TRAIN_CASES = ["case_00004", "case_00007", "case_00009", "case_00010", "case_00011", "case_00012", "case_00013",
               "case_00015", "case_00017", "case_00020", "case_00021", "case_00023", "case_00024", "case_00025",
               "case_00028", "case_00030", "case_00031", "case_00034", "case_00035", "case_00037", "case_00038",
               "case_00039", "case_00041", "case_00044", "case_00045", "case_00048", "case_00050", "case_00051",
               "case_00054", "case_00055"]
TEST_CASES = ["case_00056", "case_00057", "case_00058", "case_00061", "case_00062", "case_00064", "case_00065",
              "case_00069", "case_00070", "case_00074"]
VALIDATION_CASES = TRAIN_CASES[24:]  # recipe tuning: fit on TRAIN_CASES[:24], score these
SPLITS = {"test": (TRAIN_CASES, TEST_CASES), "validation": (TRAIN_CASES[:24], VALIDATION_CASES)}
KITS23_CASES = sorted(p.name for p in (SHARED / "data" / "kits23-cysts").glob("case_*"))
KITS23_SPLITS = {"test": (KITS23_CASES[:30], KITS23_CASES[30:]), "validation": (KITS23_CASES[:24], KITS23_CASES[24:30])}


class Dataset(NamedTuple):
    """What --dataset chooses: the kitsseg dataset name, the label maps to render, nnU-Net's id and name, the splits."""
    name: str
    labels_root: Path
    nnunet_id: int
    nnunet_name: str
    splits: dict


DATASETS = {"kits19": Dataset("KiTS19", SHARED / "data" / "kits19", 502, "Dataset502_KiTS19Rendered", SPLITS),
            "kits23": Dataset("KiTS23", SHARED / "data" / "kits23-cysts", 503, "Dataset503_KiTS23Rendered",
                              KITS23_SPLITS)}
METHODS = ("kitsseg", "nnunet_3d_fullres", "nnunet_3d_lowres")
TRAINER = "nnUNetTrainer_TimeBudget"


def run(command: list, log: Path, env: dict | None = None) -> float:
    """Run a command with its output in `log`; return wall seconds; stop the benchmark on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT, env=env)
    if code:
        raise SystemExit(f"{' '.join(map(str, command[:3]))} failed (exit {code}), see {log}")
    return time.perf_counter() - start


def render(workdir: Path, cases: list[str], workers: int, labels_root: Path) -> Path:
    """Render the missing cases of `labels_root`, `workers` render processes at a time; return the folder."""
    rendered = workdir / "rendered"
    missing = [c for c in cases if not (rendered / c / "imaging.nii.gz").exists()]
    groups = [missing[k::workers] for k in range(workers) if missing[k::workers]]
    processes = [subprocess.Popen([sys.executable, RENDER_SCRIPT, labels_root, rendered,
                                   "--cases", *group], stdout=subprocess.DEVNULL) for group in groups]
    if any(p.wait() for p in processes):
        raise SystemExit("rendering failed")
    return rendered


def prepare(workdir: Path, workers: int, dataset: str, split: str, test_cases: list[str]) -> None:
    """Rendered cases -> a kitsseg/nnU-Net raw dataset of the training cases, and the test folders."""
    marker = workdir / "split.txt"  # a workdir holds one split: its dataset and test folder depend on it
    held = f"{split}\n" if dataset == "kits19" else f"{dataset} {split}\n"  # KiTS19 workdirs predate --dataset
    if marker.exists() and marker.read_text() != held:
        raise SystemExit(f"{workdir} holds the {marker.read_text().strip()!r} split; use another --workdir")
    name = DATASETS[dataset].name
    train_cases = DATASETS[dataset].splits[split][0]
    rendered = render(workdir, train_cases + test_cases, workers, DATASETS[dataset].labels_root)
    raw = workdir / "kitsseg_data" / "raw" / name
    if not (raw / "dataset.json").exists():
        source = workdir / "train_source"
        source.mkdir(exist_ok=True)
        for case in train_cases:
            if not (source / case).exists():
                (source / case).symlink_to((rendered / case).resolve())
        run(["kits_convert", "kits", source, "--data-root", workdir / "kitsseg_data", "-d", name, "--quiet"],
            workdir / "convert.log")
    for folder in ("images", "labels"):
        (workdir / "test" / folder).mkdir(parents=True, exist_ok=True)
    for case in test_cases:
        links = {workdir / "test" / "images" / f"{case}_0000.nii.gz": rendered / case / "imaging.nii.gz",
                 workdir / "test" / "labels" / f"{case}.nii.gz": rendered / case / "segmentation.nii.gz"}
        for link, target in links.items():
            if not link.exists():
                link.symlink_to(target.resolve())
    marker.write_text(held)


def evaluate(workdir: Path, method: str, dataset: str) -> dict:
    """kits_evaluate's means; KiTS23 also the cyst label's Dice, added to per_case.csv as `cyst_dice`."""
    pred, scores = workdir / "predictions" / method, workdir / "scores" / method
    run(["kits_evaluate", "-r", workdir / "test" / "labels", "-p", pred, "-o", scores, "--quiet"],
        workdir / f"evaluate_{method}.log")
    mean = json.loads((scores / "summary.json").read_text())["mean"]
    if dataset == "kits23":
        import pandas as pd

        table = pd.read_csv(scores / "per_case.csv")
        table["cyst_dice"] = [cyst_dice(workdir / "test" / "labels" / f"{c}.nii.gz", pred / f"{c}.nii.gz")
                              for c in table["case"]]
        table.to_csv(scores / "per_case.csv", index=False)
        mean["cyst_dice"] = float(table["cyst_dice"].mean())
    return mean


def cyst_dice(reference: Path, prediction: Path) -> float:
    """Dice of label 3 (cyst); 1 when neither map has one."""
    from kitsseg.evaluation import dice, load_label_map

    return dice(load_label_map(prediction)[0] == 3, load_label_map(reference)[0] == 3)


RECIPE_FLAGS = {"lr": "--lr", "loss": "--loss", "lesion_fraction": "--lesion-fraction",
                "augment_strength": "--augment", "iters_per_epoch": "--iters-per-epoch",
                "lesion_paste_fraction": "--lesion-paste"}


def recipe_flags(args: argparse.Namespace, stage: str) -> list:
    """kits_train flags for the recipe changes asked for; none by default, so the row measures the
    preset's recipe exactly as a user gets it from plans.json. The time budget is passed only when
    --budget-min or --coarse-share make it differ from the preset's."""
    budgets = {name: plan.get("training", {}).get("time_budget_min", 0.0)
               for name, plan in json.loads(Path(args.preset).read_text())["stages"].items()}
    total_min = budgets["3d_coarse"] + budgets["3d_fine"]
    coarse_share = args.coarse_share
    if coarse_share is None:  # the preset's own split; a quarter for presets that train by epochs
        coarse_share = budgets["3d_coarse"] / total_min if total_min > 0 else 0.25
    flags = [[flag, getattr(args, name)] for name, flag in RECIPE_FLAGS.items() if getattr(args, name) is not None]
    share = coarse_share if stage == "3d_coarse" else 1 - coarse_share
    if abs(args.budget_min * share - budgets[stage]) > 1e-9:
        flags.append(["--time-budget", args.budget_min * share, "--epochs", 10 ** 6])
    return [item for flag in flags for item in flag]


def normalization_flags(normalization: str | None) -> list:
    """kits_plan_and_preprocess's `--normalization` only when one was asked for (else the preset's)."""
    return ["--normalization", normalization] if normalization else []


def preprocess_command(args: argparse.Namespace, common: list) -> list:
    return ["kits_plan_and_preprocess", *common, "--preset", args.preset, *normalization_flags(args.normalization),
            "-np", args.workers, "--quiet"]


def used_recipe(root: Path, args: argparse.Namespace) -> dict:
    """The recipe each stage was trained with, as its train_config.json recorded it."""
    plans = json.loads((root / "preprocessed" / DATASETS[args.dataset].name / "plans.json").read_text())
    return {"recipe": {"preset": Path(args.preset).name, "normalization": plans["intensity"]["scheme"], **{
        stage: {k: v for k, v in json.loads((root / "results" / DATASETS[args.dataset].name / stage / "fold_all" /
                                             "train_config.json")
                                            .read_text()).items() if k not in ("stage", "fold", "device")}
        for stage in ("3d_coarse", "3d_fine")}}}


def kitsseg(workdir: Path, args: argparse.Namespace) -> dict:
    root = workdir / "kitsseg_data"
    common = ["--data-root", root, "-d", DATASETS[args.dataset].name]
    run(preprocess_command(args, common), workdir / "kitsseg_preprocess.log")
    trained = 0.0
    for stage in ("3d_coarse", "3d_fine"):
        shutil.rmtree(root / "results" / DATASETS[args.dataset].name / stage / "fold_all", ignore_errors=True)
        trained += run(["kits_train", stage, "all", *common, "--device", args.device, "--seed", args.seed,
                        *recipe_flags(args, stage), "--quiet"], workdir / f"{args.name}_train_{stage}.log")
    pred = workdir / "predictions" / args.name
    shutil.rmtree(pred, ignore_errors=True)
    seconds = run(["kits_predict", "-i", workdir / "test" / "images", "-o", pred, *common, "-f", "all",
                   "--device", args.device, "--quiet"], workdir / f"{args.name}_predict.log")
    return {"train_s": trained, "predict_s": seconds, **used_recipe(root, args)}


def _install_trainer() -> None:
    import nnunetv2

    target = Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer" / "variants" / "training_length"
    shutil.copy(Path(__file__).with_name("nnunet_time_budget_trainer.py"), target / f"{TRAINER}.py")


def nnunet(workdir: Path, args: argparse.Namespace, configuration: str) -> dict:
    base = workdir / "nnunet"
    name, _, nnunet_id, nnunet_name, _ = DATASETS[args.dataset]
    env = {**os.environ, "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
           "nnUNet_results": str(base / "results"), "nnUNet_compile": "false",
           "nnUNet_n_proc_DA": str(args.workers), "KITSSEG_BENCH_BUDGET_MIN": str(args.budget_min)}
    raw = base / "raw" / nnunet_name
    if not raw.exists():
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.symlink_to((workdir / "kitsseg_data" / "raw" / name).resolve())  # the same format
    plans = base / "preprocessed" / nnunet_name / "nnUNetPlans.json"
    if not (base / "preprocessed" / nnunet_name / f"nnUNetPlans_{configuration}").exists():
        run(["nnUNetv2_plan_and_preprocess", "-d", nnunet_id, "-c", configuration, "-np", args.workers,
             "-npfp", args.workers], workdir / f"nnunet_preprocess_{configuration}.log", env)
    if configuration not in json.loads(plans.read_text())["configurations"]:
        return {"note": f"nnU-Net planned no {configuration} for this dataset"}
    _install_trainer()
    trained_dir = base / "results" / nnunet_name / f"{TRAINER}__nnUNetPlans__{configuration}"
    record = workdir / f"nnunet_train_{configuration}.json"  # written once the training has finished
    pred = workdir / "predictions" / f"nnunet_{configuration}"
    if args.resume and record.exists() and (trained_dir / "fold_all" / "checkpoint_final.pth").exists():
        trained = json.loads(record.read_text())["train_s"]
        _drop_unreadable(pred)
    else:
        shutil.rmtree(trained_dir, ignore_errors=True)
        shutil.rmtree(pred, ignore_errors=True)
        trained = run(["nnUNetv2_train", nnunet_id, configuration, "all", "-tr", TRAINER, "-device", args.device],
                      workdir / f"nnunet_train_{configuration}.log", env)
        record.write_text(json.dumps({"train_s": trained}))
    images = len(list((workdir / "test" / "images").glob("*.nii.gz")))
    done = len(list(pred.glob("*.nii.gz"))) if pred.exists() else 0
    seconds = run(["nnUNetv2_predict", "-i", workdir / "test" / "images", "-o", pred, "-d", nnunet_id,
                   "-c", configuration, "-f", "all", "-tr", TRAINER, "--disable_tta", "-device", args.device,
                   "-step_size", args.nnunet_step_size, "-npp", 1, "-nps", 1, "--continue_prediction"],
                  workdir / f"nnunet_predict_{configuration}.log", env)
    return {"train_s": trained, "predict_s": seconds, "predicted_cases": images - done}


def _drop_unreadable(folder: Path) -> None:
    """Delete predictions that a killed run left half-written (nnU-Net writes them in place)."""
    from kitsseg.errors import KitssegError
    from kitsseg.io import check_nifti_complete

    for path in folder.glob("*.nii.gz"):
        try:
            check_nifti_complete(path)
        except KitssegError:
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work") / "accuracy")
    parser.add_argument("--budget-min", type=float, default=45.0, help="training minutes per method (default: 45)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--dataset", choices=DATASETS, default="kits19",
                        help="kits19 (default): 30 + 10 rendered KiTS19 cases; kits23: 30 + 10 rendered KiTS23 "
                             "cases with cysts (the cyst class trained and scored)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="test: train on the 30 TRAIN_CASES, "
                        "score TEST_CASES; validation (recipe tuning): train on 24 of them, score the other 6")
    parser.add_argument("--test-cases", type=int, default=len(TEST_CASES),
                        help="use the first N held-out cases (default: all of the split)")
    parser.add_argument("-np", "--workers", type=int, default=2, help="processes for rendering, preprocessing "
                        "and data augmentation, the same for every method (default: 2)")
    parser.add_argument("--preset", default=str(REPO / "plans" / "cpu.json"), help="kitsseg preset")
    parser.add_argument("--normalization", choices=["window", "percentile"],
                        help="kitsseg: CT normalisation (default: the preset's; a workdir holds one cache, so "
                             "another normalisation needs its own --workdir)")
    parser.add_argument("--coarse-share", type=float, help="kitsseg: budget share of the coarse stage (default: the "
                        "preset's, from its stages' time_budget_min; 0.25 for a preset that trains by epochs)")
    recipe = "(default: the preset's recipe in plans.json)"
    parser.add_argument("--lr", type=float, help=f"kitsseg: initial learning rate {recipe}")
    parser.add_argument("--loss", help=f"kitsseg: training loss {recipe}")
    parser.add_argument("--lesion-fraction", type=float, help=f"kitsseg: crops centred on lesions {recipe}")
    parser.add_argument("--lesion-paste", dest="lesion_paste_fraction", type=float,
                        help=f"kitsseg: fine crops holding kidney that get a pasted lesion {recipe}")
    parser.add_argument("--augment", dest="augment_strength", type=float, help=f"kitsseg: augmentation strength {recipe}")
    parser.add_argument("--seed", type=int, default=0, help="kitsseg: kits_train's random seed (default: 0), "
                        "to repeat a run")
    parser.add_argument("--name", default="kitsseg", help="kitsseg: row name, to keep recipe variants apart")
    parser.add_argument("--iters-per-epoch", type=int, help="kitsseg: iterations per epoch (each ends with a "
                        f"validation pass and a checkpoint) {recipe}")
    parser.add_argument("--nnunet-step-size", type=float, default=0.5, help="nnU-Net sliding-window step")
    parser.add_argument("--resume", action="store_true", help="nnU-Net: reuse a finished training in this workdir "
                        "and predict only the test cases a stopped run left unpredicted (the inference time "
                        "then counts those cases)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "predictions").mkdir(exist_ok=True)
    splits = DATASETS[args.dataset].splits
    train_cases, test_cases = splits[args.split][0], splits[args.split][1][: args.test_cases]
    prepare(workdir, args.workers, args.dataset, args.split, test_cases)
    names = [args.name if m == "kitsseg" else m for m in args.methods]
    results = workdir / "results.json"  # rows of earlier runs in this workdir are kept unless re-run
    rows = [r for r in (json.loads(results.read_text()) if results.exists() else []) if r["method"] not in names]
    for method, name in zip(args.methods, names):
        times = kitsseg(workdir, args) if method == "kitsseg" else nnunet(workdir, args, method[len("nnunet_"):])
        scores = evaluate(workdir, name, args.dataset) if "note" not in times else {}
        rows.append({"method": name, "dataset": args.dataset, "budget_min": args.budget_min, "device": args.device,
                     "test_cases": len(test_cases), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "commit": git_commit(), "machine": machine_description(), **times, **scores})
        results.write_text(json.dumps(rows, indent=2))
    print(f"machine: {machine_description()}; {args.split} split: {len(train_cases)} training cases, "
          f"{len(test_cases)} held-out cases as listed (rendered images: synthetic intensities on real "
          f"{DATASETS[args.dataset].name} geometry, not {DATASETS[args.dataset].name} results)")
    header = ("method", "budget min", "device", "test cases", "kidney Dice", "masses Dice", "tumour Dice", "cyst Dice",
              "KiTS19 composite", "surface Dice (kidney/masses/tumour)", "inference s/case", "train wall s",
              "date, commit")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        stamp = f"{row.get('date', 'before stamps')}, {row.get('commit', '?')}"
        start = f"| {row['method']} | {row['budget_min']:g} | {row['device']} | {row['test_cases']} |"
        if "note" in row:
            print(f"{start} {row['note']} | {stamp} |")
            continue
        dice = " | ".join(f"{row[k]:.3f}" if k in row else "–" for k in ("kidney_dice", "masses_dice", "tumor_dice",
                                                                          "cyst_dice"))
        sd = "/".join(f"{row[f'{r}_sd']:.3f}" for r in ("kidney", "masses", "tumor"))
        print(f"{start} {dice} | {row['composite_kits19']:.3f} | {sd} | "
              f"{row['predict_s'] / row.get('predicted_cases', row['test_cases']):.1f} | {row['train_s']:.0f} | {stamp} |")


if __name__ == "__main__":
    main()
