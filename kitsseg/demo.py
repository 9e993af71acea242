"""kits_demo: the whole method end to end on procedural phantoms, sized for a laptop CPU.

Generates training and held-out phantom cases, plans and preprocesses them with the
`plans/cpu_demo.json` preset, trains the coarse and the fine VB-Net on every training case
within a time budget, predicts the held-out cases with the cascade, evaluates them, and
writes overlays and WORKDIR/summary.json (kits_evaluate's format).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dataset_conversion.phantom import write_phantom_dataset
from kitsseg.evaluation import evaluate_folders
from kitsseg.inference.predictor import Predictor
from kitsseg.inference.run import predict_inputs
from kitsseg.paths import DatasetPaths
from kitsseg.plan_and_preprocess import plan_and_preprocess
from kitsseg.planning import COARSE, FINE
from kitsseg.training.trainer import TrainConfig, train

DEMO_PRESET = Path(__file__).resolve().parent.parent / "plans" / "cpu_demo.json"
COARSE_SHARE = 0.25  # of the training time; the coarse task (find two kidneys at 4 mm) is easy
# Dice alone barely penalises false positives of a class absent from a crop (cysts are rare);
# cross-entropy does, so the demo's recipe is generalized Dice + cross-entropy.
LOSS = "gdice_ce"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("kitsseg_demo")
    minutes: float = 8.0
    num_train: int = 16
    num_test: int = 6
    device: str = "auto"
    seed: int = 0
    quiet: bool = False


def _say(text: str, config: DemoConfig) -> None:
    if not config.quiet:
        print(f"\n== {text}", flush=True)


def run_demo(config: DemoConfig) -> dict:
    paths = DatasetPaths(config.workdir / "data", "Demo")
    test_raw = config.workdir / "test"
    for folder in (paths.root, test_raw, config.workdir / "predictions"):
        shutil.rmtree(folder, ignore_errors=True)
    _say(f"1/5 generating {config.num_train} training and {config.num_test} held-out phantom cases", config)
    write_phantom_dataset(paths.raw, config.num_train, seed=config.seed, quiet=config.quiet)
    write_phantom_dataset(test_raw, config.num_test, seed=config.seed + 1000, quiet=config.quiet)

    _say(f"2/5 planning and preprocessing with {DEMO_PRESET.name}", config)
    plan_and_preprocess(paths, num_workers=2, preset=DEMO_PRESET, quiet=config.quiet)

    for stage, share in ((COARSE, COARSE_SHARE), (FINE, 1 - COARSE_SHARE)):
        minutes = config.minutes * share
        _say(f"3/5 training {stage} on every case for {minutes:.1f} min", config)
        train(paths, TrainConfig(stage=stage, fold="all", epochs=10_000, iters_per_epoch=20, val_iters=2,
                                 lr=3e-3, loss=LOSS, device=config.device, num_workers=1, seed=config.seed,
                                 lesion_fraction=0.4, time_budget_min=minutes), quiet=config.quiet)

    _say("4/5 predicting the held-out cases with the cascade", config)
    predictor = Predictor.from_model_dir(paths.results, ["all"], config.device)
    predictions = config.workdir / "predictions"
    predict_inputs(predictor, test_raw / "imagesTr", predictions, overwrite=True, quiet=config.quiet,
                   overlays=True)

    _say("5/5 evaluating", config)
    summary = evaluate_folders(test_raw / "labelsTr", predictions, config.workdir, "all", config.quiet)
    table = pd.read_csv(config.workdir / "per_case.csv")
    if not config.quiet:
        print(table[["case", "kidney_dice", "tumor_dice", "composite_kits19", "kidney_sd", "tumor_hd95"]]
              .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"mean kidney Dice {summary['mean']['kidney_dice']:.3f}   mean tumour Dice "
              f"{summary['mean']['tumor_dice']:.3f}   KiTS19 composite {summary['mean']['composite_kits19']:.3f}")
        print(f"\nmodels: {paths.results}\npredictions and overlays: {predictions}\n"
              f"per-case metrics: {config.workdir / 'per_case.csv'}\nsummary: {config.workdir / 'summary.json'}")
    return summary
