"""benchmarks/bench_accuracy.py's kits_train flags: none for the preset's own recipe, time budgets otherwise."""
import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_accuracy import RECIPE_FLAGS, preprocess_command, recipe_flags  # noqa: E402


def _args(preset: str, budget_min: float = 45.0, coarse_share: float | None = None, **recipe) -> argparse.Namespace:
    fields = dict.fromkeys(RECIPE_FLAGS)  # no recipe flag given
    return argparse.Namespace(preset=str(REPO / "plans" / preset), budget_min=budget_min,
                              coarse_share=coarse_share, **{**fields, **recipe})


def _budget(flags: list) -> float | None:
    return flags[flags.index("--time-budget") + 1] if "--time-budget" in flags else None


@pytest.mark.parametrize("stage", ["3d_coarse", "3d_fine"])
def test_cpu_preset_at_its_own_45_minutes_passes_no_flag(stage):
    assert recipe_flags(_args("cpu.json"), stage) == []


def test_a_coarse_share_splits_the_budget():
    args = _args("cpu.json", coarse_share=0.25)
    assert _budget(recipe_flags(args, "3d_coarse")) == pytest.approx(11.25)
    assert _budget(recipe_flags(args, "3d_fine")) == pytest.approx(33.75)


def test_other_budget_keeps_the_presets_coarse_share():
    args = _args("cpu.json", budget_min=20.0)  # cpu.json: 6.75 of 45 minutes for the coarse stage
    assert _budget(recipe_flags(args, "3d_coarse")) == pytest.approx(3.0)
    assert _budget(recipe_flags(args, "3d_fine")) == pytest.approx(17.0)


def test_preset_training_by_epochs_gives_the_coarse_stage_a_quarter():
    args = _args("vbnet_paper.json", budget_min=20.0)  # no time budgets in the paper preset
    assert _budget(recipe_flags(args, "3d_coarse")) == pytest.approx(5.0)
    assert _budget(recipe_flags(args, "3d_fine")) == pytest.approx(15.0)


def test_recipe_flags_are_passed_through():
    flags = recipe_flags(_args("cpu.json", lr=1e-2, loss="crop_dice_ce"), "3d_fine")
    assert flags == ["--lr", 1e-2, "--loss", "crop_dice_ce"]


@pytest.mark.parametrize("normalization, expected", [(None, []), ("percentile", ["--normalization", "percentile"])])
def test_normalization_is_passed_to_preprocessing_only_when_asked_for(normalization, expected):
    args = argparse.Namespace(preset="cpu.json", normalization=normalization, workers=2)
    command = preprocess_command(args, ["--data-root", "root"])
    assert command == ["kits_plan_and_preprocess", "--data-root", "root", "--preset", "cpu.json", *expected,
                       "-np", 2, "--quiet"]
