"""benchmarks/tune_fine_stage.py: run names (a shorter budget or mirroring never reuses a default run's folders),
the plans changes of its stage variants and the validation cases of each dataset."""
import argparse
import sys
from pathlib import Path

import pytest
import torch

from kitsseg.network.vbnet import VBNet
from kitsseg.planning import NetworkConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_accuracy import DATASETS  # noqa: E402
from tune_fine_stage import (DEFAULT_BUDGET_MIN, STAGE_VARIANTS, apply_stage_changes, prepare,  # noqa: E402
                             run_name, validation_cases)


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


def test_no_full_res_unit_variant_builds_a_net_without_the_full_resolution_unit():
    network = {"stem_channels": 8, "down_channels": [16, 32, 64, 128], "down_blocks": [1, 2, 2, 2],
               "up_channels": [128, 64, 32, 16], "up_blocks": [2, 2, 1, 1], "bottleneck_min_channels": 16}
    stage = {"network": dict(network)}
    apply_stage_changes(stage, STAGE_VARIANTS["no_full_res_unit"])
    assert stage["network"] == {**network, "up_blocks": [2, 2, 1, 0]}
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in stage["network"].items()}
    full = VBNet(NetworkConfig(num_classes=3, **{**config, "up_blocks": (2, 2, 1, 1)}))
    reduced = VBNet(NetworkConfig(num_classes=3, **config))
    assert len(reduced.ups[-1].units) == 0 and len(full.ups[-1].units) == 1
    removed = sum(p.numel() for p in full.ups[-1].units.parameters())
    assert removed == (16 * 4 + 4 * 4 * 27 + 4 * 16) + 2 * (4 + 4 + 16)  # the bottleneck's convs, its batch norms
    assert sum(p.numel() for p in reduced.parameters()) == sum(p.numel() for p in full.parameters()) - removed
    assert reduced.eval()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_kits19_validation_is_the_twenty_small_tumour_cases():
    cases = validation_cases("kits19")
    assert len(cases) == 20 and set(cases.values()) == {DATASETS["kits19"].labels_root}
    assert {"case_00045", "case_00055", "case_00018", "case_00129"} <= set(cases)


def test_kits23_validation_leaves_out_the_patients_it_trains_on():
    if len(DATASETS["kits23"].splits["test"][0]) != 30:
        pytest.skip("../shared/data/kits23-cysts is absent")
    cases = validation_cases("kits23")
    kits23 = [c for c, root in cases.items() if root == DATASETS["kits23"].labels_root]
    assert kits23 == ["case_00145", "case_00152", "case_00161", "case_00178", "case_00179", "case_00183"]
    kits19 = {c for c, root in cases.items() if root == DATASETS["kits19"].labels_root}
    # case_00045, 00051 and 00094 are KiTS23 training patients: scoring them would score the training set
    assert kits19 == set(validation_cases("kits19")) - {"case_00045", "case_00051", "case_00094"}
    assert len(cases) == 23


def test_a_workdir_of_the_other_dataset_is_refused_before_anything_is_rendered(tmp_path):
    (tmp_path / "val" / "labels").mkdir(parents=True)
    (tmp_path / "val" / "labels" / "case_00145.nii.gz").touch()  # a KiTS23 validation case
    args = argparse.Namespace(dataset="kits19", workers=1, preset="unused", normalization=None)
    with pytest.raises(SystemExit, match="another dataset's cases"):
        prepare(tmp_path, args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]
