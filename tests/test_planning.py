import json

import pytest

from kitsseg.errors import KitssegError
from kitsseg.fingerprint import Fingerprint
from kitsseg.planning import (COARSE, DEFAULT_PRESET, FINE, NetworkConfig, Plans, batch_size_for_budget,
                              estimate_activation_bytes, load_plans, load_preset, plan_experiment)

LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def fingerprint(shape=(80, 512, 512), spacing=(3.0, 0.8, 0.8), kidney=(110.0, 80.0, 75.0)):
    return Fingerprint(cases={}, median_spacing_mm=spacing, median_shape=shape,
                       foreground_intensity={"mean": 120.0, "std": 40.0, "min": -50.0, "max": 300.0,
                                             "percentile_00_5": 10.0, "percentile_99_5": 250.0},
                       kidney_size_mm={"median": list(kidney), "percentile_95": [140.0, 95.0, 95.0]},
                       label_values=(0, 1, 2))


def test_paper_plans():
    plans = plan_experiment(fingerprint(), "KiTS19", LABELS, load_preset(DEFAULT_PRESET))
    coarse, fine = plans.stage(COARSE), plans.stage(FINE)
    assert coarse.spacing_mm == (6.0, 6.0, 6.0) and fine.spacing_mm == (1.0, 1.0, 1.0)
    # 80 slices x 3 mm = 240 mm -> 40 voxels -> 48 (multiple of 16); 512 x 0.8 = 409.6 mm -> 69 -> 80
    assert coarse.patch_size == (48, 80, 80)
    assert fine.patch_size == (96, 96, 96)  # kidney + margins is larger than 96 mm
    assert coarse.class_names == ("background", "kidney_region") and coarse.num_classes == 2
    assert fine.class_names == ("background", "kidney", "tumor")
    assert fine.voi_margin_mm == (12.0, 12.0, 12.0)  # two 6 mm coarse voxels > 10% of the kidney
    assert plans.intensity.scheme == "window" and plans.intensity.window_hu == (-200, 500)
    assert 2 <= fine.batch_size <= 32


def test_cyst_class_when_the_dataset_has_it():
    plans = plan_experiment(fingerprint(), "KiTS23", {**LABELS, "cyst": 3}, load_preset(DEFAULT_PRESET))
    assert plans.stage(FINE).class_names == ("background", "kidney", "tumor", "cyst")
    assert plans.stage(FINE).network.num_classes == 4


def test_percentile_normalization_from_fingerprint():
    plans = plan_experiment(fingerprint(), "K", LABELS, load_preset(DEFAULT_PRESET), normalization="percentile")
    assert plans.intensity.scheme == "percentile"
    assert plans.intensity.window_hu == (10.0, 250.0)
    assert (plans.intensity.mean, plans.intensity.std) == (120.0, 40.0)


def test_json_round_trip(tmp_path):
    plans = plan_experiment(fingerprint(), "K", LABELS, load_preset(DEFAULT_PRESET))
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans.to_dict()))
    assert load_plans(path) == plans
    assert json.loads(path.read_text())["stages"][FINE]["num_classes"] == 3


def test_the_voi_kidney_floor_is_planned_and_read_under_its_earlier_name():
    plans = plan_experiment(fingerprint(), "K", LABELS, load_preset(DEFAULT_PRESET))
    assert plans.stage(FINE).min_voi_kidney_ml == 16.5  # 2.5 % of the 110 x 80 x 75 mm median kidney box
    data = plans.to_dict()
    data["stages"][FINE]["min_cut_voi_kidney_ml"] = data["stages"][FINE].pop("min_voi_kidney_ml")  # 2dab420-3255ec8
    assert Plans.from_dict(data) == plans


def test_hand_edited_plans_change_the_stage_hash(tmp_path):
    plans = plan_experiment(fingerprint(), "K", LABELS, load_preset(DEFAULT_PRESET))
    data = plans.to_dict()
    data["stages"][FINE]["spacing_mm"] = [1.5, 1.5, 1.5]
    edited = Plans.from_dict(data)
    assert edited.stage(FINE).spacing_mm == (1.5, 1.5, 1.5)
    assert edited.stage_hash(FINE) != plans.stage_hash(FINE)
    assert edited.stage_hash(COARSE) == plans.stage_hash(COARSE)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"][FINE].update(batch_size="two"), "batch_size must be a int"),
    (lambda d: d["stages"][FINE].update(colour=1), "unknown StagePlan key"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.pop("intensity"), "intensity"),
])
def test_invalid_plans_give_one_clear_line(tmp_path, edit, message):
    data = plan_experiment(fingerprint(), "K", LABELS, load_preset(DEFAULT_PRESET)).to_dict()
    edit(data)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KitssegError, match=message) as info:
        load_plans(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_activation_estimate_scales_with_volume_and_sets_batch():
    net = NetworkConfig(num_classes=3)
    small, large = estimate_activation_bytes(net, (48, 48, 48)), estimate_activation_bytes(net, (96, 96, 96))
    assert large == pytest.approx(8 * small, rel=0.01)
    assert batch_size_for_budget(net, (96, 96, 96), 80) > batch_size_for_budget(net, (96, 96, 96), 8)
    assert batch_size_for_budget(net, (96, 96, 96), 1) == 2  # never below 2


def test_presets_carry_the_training_recipe():
    from kitsseg.planning import CPU_PRESET, TrainingRecipe, loader_workers

    paper = plan_experiment(fingerprint(), "KiTS19", LABELS, load_preset(DEFAULT_PRESET))
    coarse, fine = paper.stage(COARSE).training, paper.stage(FINE).training
    assert (fine.loss, fine.lr, fine.epochs, fine.iters_per_epoch) == ("gdice_ce", 3e-3, 100, 250)
    assert coarse.epochs == 25 and coarse.epochs < fine.epochs  # the coarse stage needs far fewer iterations
    assert fine.num_workers == loader_workers() == min(__import__("os").cpu_count(), 12)
    cpu = plan_experiment(fingerprint(), "KiTS19", LABELS, load_preset(CPU_PRESET), num_workers=3)
    # bench_accuracy.py's 45-minute recipe: 15 % of the budget for the coarse stage, 100 iterations an epoch
    assert [cpu.stage(s).training.time_budget_min for s in (COARSE, FINE)] == [6.75, 38.25]
    assert cpu.stage(FINE).training.iters_per_epoch == 100 and cpu.stage(FINE).training.num_workers == 3
    again = Plans.from_dict(json.loads(json.dumps(cpu.to_dict())))
    assert again == cpu
    old = cpu.to_dict()
    for stage in old["stages"].values():
        del stage["training"]
    assert Plans.from_dict(old).stage(FINE).training == TrainingRecipe()  # plans written before the recipe
    assert loader_workers(64) == 12 and loader_workers(2) == 2


def test_fine_recipe_jitters_the_voi_by_one_coarse_voxel_and_context_is_half_a_patch():
    preset = load_preset(DEFAULT_PRESET)
    preset["stages"][COARSE]["spacing_mm"] = [5.0, 6.0, 7.0]
    plans = plan_experiment(fingerprint(), "KiTS19", LABELS, preset)
    assert plans.stage(FINE).training.voi_jitter_mm == (5.0, 6.0, 7.0)
    assert plans.stage(COARSE).training.voi_jitter_mm == (0.0, 0.0, 0.0)
    assert plans.stage(FINE).context_mm == (48.0, 48.0, 48.0)  # 96^3 crops at 1 mm
    assert plans.stage(COARSE).context_mm == (0.0, 0.0, 0.0)
    preset["stages"][FINE]["training"] = {"voi_jitter_mm": [0, 0, 0]}
    assert plan_experiment(fingerprint(), "K", LABELS, preset).stage(FINE).training.voi_jitter_mm == (0, 0, 0)


def test_no_gpu_plans_the_gpu_preset_with_one_line(monkeypatch):
    import kitsseg.plan_and_preprocess as pp
    from kitsseg.planning import CPU_PRESET

    monkeypatch.setattr(pp, "visible_gpu_memory_gb", lambda: None)
    with pytest.warns(UserWarning, match=r"no GPU visible: planning the GPU preset \(vbnet_paper.json, batch "
                                         r"sizes for 8 GB\); to train on this CPU, plan with --preset .*cpu.json"):
        assert pp.planned_gpu_memory_gb(None, DEFAULT_PRESET) == 8.0
    assert pp.planned_gpu_memory_gb(24.0, DEFAULT_PRESET) == 24.0
    monkeypatch.setattr(pp, "visible_gpu_memory_gb", lambda: 79.6)
    assert pp.planned_gpu_memory_gb(None, DEFAULT_PRESET) == 79.6  # the GPU's own memory
    monkeypatch.setattr(pp, "visible_gpu_memory_gb", lambda: None)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pp.planned_gpu_memory_gb(None, CPU_PRESET) == 8.0  # the CPU preset: nothing to say
