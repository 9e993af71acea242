"""benchmarks/tune_fine_stage.py's run names: a shorter budget or mirroring never reuses a default run's folders."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from tune_fine_stage import DEFAULT_BUDGET_MIN, STAGE_VARIANTS, apply_stage_changes, run_name  # noqa: E402


def test_default_budget_keeps_the_historical_names():
    assert DEFAULT_BUDGET_MIN == 18.0
    assert run_name("baseline", 0, 18.0, False) == "baseline_s0"
    assert run_name("crop_dice_ce", 1, 18.0, True) == "crop_dice_ce_s1_tta"


def test_other_budgets_are_part_of_the_name():
    assert run_name("baseline", 0, 9.0, False) == "baseline_s0_9min"
    assert run_name("baseline", 1, 27.5, True) == "baseline_s1_27.5min_tta"


def test_stage_variants_change_the_network_or_the_stage_itself():
    stage = {"batch_size": 2, "network": {"stem_channels": 8, "bottleneck_min_channels": 32}}
    apply_stage_changes(stage, STAGE_VARIANTS["bottleneck_16"])
    assert stage == {"batch_size": 2, "network": {"stem_channels": 8, "bottleneck_min_channels": 16}}
    apply_stage_changes(stage, STAGE_VARIANTS["batch_3"])
    assert stage == {"batch_size": 3, "network": {"stem_channels": 8, "bottleneck_min_channels": 16}}
