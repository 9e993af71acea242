"""The cascade with oracle 'networks' (images whose intensities encode the labels), fake folds,
untrained tiny checkpoints, and the kits_predict command."""
import dataclasses
import hashlib
import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from kitsseg.checkpoint import save_checkpoint
from kitsseg.fingerprint import Fingerprint
from kitsseg.inference.engine import mirrorings
from kitsseg.inference.predictor import Predictor
from kitsseg.inference.sliding_window import network_voxels, planned_overlap, predict_volume, tile_for
from kitsseg.inference.torch_engine import fold_batch_norms
from kitsseg.inference.voi import coarse_mask_in_box
from kitsseg.network.vbnet import VBNet
from kitsseg.planning import COARSE, DEFAULT_PRESET, FINE, Plans, load_preset, plan_experiment
from kitsseg.postprocessing import LESION_WEIGHT, PostprocessConfig
from kitsseg.provenance import plans_hash

LEVEL_HU = 150.0  # label L is painted as L * 150 - 150 HU: inside the [-200, 500] window


def paper_plans(cysts=True):
    fingerprint = Fingerprint({}, (3.0, 0.8, 0.8), (100, 512, 512), {"mean": 0, "std": 1, "min": 0, "max": 1,
                              "percentile_00_5": 0, "percentile_99_5": 1},
                              {"median": [110.0, 80.0, 75.0], "percentile_95": [140.0, 95.0, 95.0]}, (0, 1, 2, 3))
    labels = {"background": 0, "kidney": 1, "tumor": 2, **({"cyst": 3} if cysts else {})}
    return plan_experiment(fingerprint, "K", labels, load_preset(DEFAULT_PRESET))


def decode(x: torch.Tensor) -> torch.Tensor:
    """Normalised input -> HU -> continuous label level."""
    hu = (x + 1) / 2 * 700 - 200
    return (hu + LEVEL_HU) / LEVEL_HU


def coarse_oracle(x):
    foreground = (decode(x) > 0.5).float() * 2 - 1
    return torch.cat([-foreground, foreground], 1) * 20


def fine_oracle(num_classes):
    def predict(x):
        level = decode(x).round().clamp(0, num_classes - 1).long()[:, 0]
        return torch.nn.functional.one_hot(level, num_classes).movedim(-1, 1).float() * 20
    return predict


def encoded_image(seg: sitk.Image) -> sitk.Image:
    return sitk.Cast(seg, sitk.sitkInt16) * int(LEVEL_HU) - int(LEVEL_HU)


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.slow
@pytest.mark.parametrize("relative", ["kits19/case_00002", "kits19/case_00004",
                                      "kits23-cysts/case_00002", "kits23-cysts/case_00006"])
def test_oracle_cascade_returns_the_ground_truth(shared_data, relative):
    seg = sitk.ReadImage(str(shared_data / relative / "segmentation.nii.gz"))
    plans = paper_plans()
    predictor = Predictor(plans, [coarse_oracle], [fine_oracle(plans.stage(FINE).num_classes)])
    out = predictor.predict(encoded_image(seg))
    assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
           (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection())
    got, truth = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(seg)
    assert dice(got > 0, truth > 0) >= 0.98
    assert dice(got == 2, truth == 2) >= 0.95
    if (truth == 3).sum() > 1000:
        assert dice(got == 3, truth == 3) >= 0.8


def test_folds_are_averaged():
    plans = paper_plans(cysts=False)
    fold_a = lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731  p = (0.5, 0.5)
    fold_b = lambda x: torch.cat([torch.full_like(x, np.log(3.0)), torch.zeros_like(x)], 1)  # noqa: E731 (0.75, 0.25)
    predictor = Predictor(plans, [fold_a, fold_b], [fine_oracle(3)])
    probabilities = predictor._probabilities(predictor.coarse_models, plans.stage(COARSE),
                                             np.zeros((20, 30, 30), np.float32))
    assert probabilities.shape == (2, 20, 30, 30)
    np.testing.assert_allclose(probabilities[:, 3, 4, 5], [0.625, 0.375], rtol=1e-5)


def test_tta_averages_the_eight_mirrorings():
    """A 'network' whose logit is a ramp along all three axes (a different slope on each): with TTA
    each voxel gets the mean of the softmax at its 8 mirror images, written out here."""
    plans = paper_plans(cysts=False)
    slopes, shape = (0.05, 0.11, 0.23), (16, 16, 16)  # one pass, no padding (stride 16)

    def ramp(x):
        grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in x.shape[2:]], indexing="ij")
        logit = sum(s * g for s, g in zip(slopes, grids)) - 2.0
        return torch.cat([torch.zeros_like(x), logit.expand_as(x)], 1)

    predictor = Predictor(plans, [ramp], [fine_oracle(3)], tta=True)
    p = predictor._probabilities(predictor.coarse_models, plans.stage(COARSE), np.zeros(shape, np.float32))
    index = np.indices(shape).astype(np.float64)
    expected = np.mean([1 / (1 + np.exp(-(sum(s * (n - 1 - i if flip else i) for s, n, i, flip
                                              in zip(slopes, shape, index, flips)) - 2.0)))
                        for flips in itertools.product((False, True), repeat=3)], axis=0)
    np.testing.assert_allclose(p[1], expected, rtol=1e-5)
    np.testing.assert_allclose(p[0], 1 - expected, rtol=1e-5)


def test_no_kidney_gives_an_empty_map():
    plans = paper_plans(cysts=False)
    nothing = lambda x: torch.cat([torch.ones_like(x), -torch.ones_like(x)], 1)  # noqa: E731
    predictor = Predictor(plans, [nothing], [fine_oracle(3)])
    result = predictor.predict_array(np.zeros((30, 40, 40), np.int16), (2.0, 1.0, 1.0))
    assert result.kidneys_found == 0 and not result.labels.any()


def test_lesion_probabilities_are_weighted_in_the_class_decision():
    """A fine 'network' that gives the kidney block (background, kidney, tumour) = (0.05, 0.65, 0.30):
    the default (plain argmax) calls it kidney, a lesion weight of 3 (0.30 x 3 = 0.90 > 0.65) tumour;
    background stays (0.98 against 0.01 x 3)."""
    hu = np.full((40, 40, 40), -LEVEL_HU, np.int16)
    hu[12:28, 14:26, 14:26] = 0  # one 'kidney' for the coarse oracle

    def fine(x):
        inside = (decode(x) > 0.5).float()
        p = inside * torch.tensor([0.05, 0.65, 0.30]).view(1, 3, 1, 1, 1) + \
            (1 - inside) * torch.tensor([0.98, 0.01, 0.01]).view(1, 3, 1, 1, 1)
        return torch.log(p)

    block = hu == 0
    for config, inside_label in ((PostprocessConfig(lesion_weight=3.0), 2), (PostprocessConfig(), 1)):
        labels = Predictor(paper_plans(cysts=False), [coarse_oracle], [fine], postprocess=config).predict_array(
            hu, (2.0, 2.0, 2.0)).labels
        assert dice(labels == inside_label, block) > 0.9 and not labels[~block].any()
    assert PostprocessConfig().lesion_weight == LESION_WEIGHT == 1.0


def test_coarse_mask_in_box_repeats_each_coarse_voxel_over_the_original_voxels_it_covers():
    mask = np.random.default_rng(0).random((2, 2, 2)) > 0.5
    upsampled = np.repeat(np.repeat(np.repeat(mask, 2, 0), 3, 1), 2, 2)  # original grid (4, 6, 4)
    box = (slice(1, 4), slice(2, 6), slice(0, 3))
    assert np.array_equal(coarse_mask_in_box(mask, box, (4, 6, 4)), upsampled[box])


def test_postprocessing_keeps_the_component_the_coarse_stage_found_not_the_largest():
    hu = np.full((40, 40, 40), -150, np.int16)  # background: level 0
    hu[16:24, 10:16, 10:16] = 0  # the kidney (level 1): the coarse oracle finds it
    hu[:, :, 19:] = -120  # level 0.2: the coarse oracle ignores it, the fine 'network' below calls it kidney

    def fine(x):
        kidney = (decode(x) > 0.1).float()
        return torch.cat([1 - kidney, kidney, torch.zeros_like(kidney)], 1) * 20

    result = Predictor(paper_plans(cysts=False), [coarse_oracle], [fine]).predict_array(
        hu, (2.0, 2.0, 2.0), keep_unprocessed=True)
    kidney = hu == 0
    assert result.kidneys_found == 1
    assert (result.unprocessed[:, :, 19:] > 0).sum() > (result.unprocessed[kidney] > 0).sum() > 0  # false region larger
    assert dice(result.labels > 0, kidney) > 0.9 and not result.labels[:, :, 19:].any()


def test_tiles_are_planned_for_the_fewest_network_voxels_within_the_limit():
    shape, patch = (187, 151, 248), (96, 96, 96)  # case_00151's kidney VOI at 1 mm
    tile = tile_for(shape, patch, 920_000, stride=16)
    assert tile == (112, 96, 80)
    assert network_voxels(shape, tile, planned_overlap(patch)) == 16 * 112 * 96 * 80  # 2 x 2 x 4 tiles
    assert network_voxels(shape, patch, (48, 48, 48)) == 45 * 96 ** 3  # before: patches overlapping by half
    assert tile_for(shape, patch, 10 ** 8, stride=16) is None  # one pass where memory allows
    assert tile_for(shape, patch, 1000, stride=16) == (48, 48, 48)  # nothing fits: the smallest, half a patch
    assert tile_for(shape, patch) == patch  # no stride (training's validation): the patch, as before


def test_tiles_blend_to_the_one_pass_result_of_a_voxelwise_network():
    image = np.random.default_rng(5).normal(size=(40, 37, 70)).astype(np.float32)
    voxelwise = lambda x: np.concatenate([x, np.sin(x)], 1)  # noqa: E731
    patch = (32, 32, 32)
    tile = tile_for(image.shape, patch, 30_000, stride=16)
    assert tile is not None
    tiled = predict_volume(voxelwise, image, 2, 16, tile, overlap=planned_overlap(patch))
    np.testing.assert_allclose(tiled, predict_volume(voxelwise, image, 2, 16), rtol=1e-5, atol=1e-6)


def test_folding_batch_norms_keeps_the_network_function():
    torch.manual_seed(0)
    network = VBNet(paper_plans().stage(FINE).network)
    for norm in (m for m in network.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        for values in (norm.running_mean, norm.weight, norm.bias):
            values.data.normal_(0, 0.5)
        norm.running_var.data.uniform_(0.5, 2)
    network.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = network(x)
        folded = fold_batch_norms(network)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


STAGES = ["read + canonical orientation", "coarse resampling", "coarse network", "VOI extraction and resampling",
          "fine networks", "probabilities back to the original grid", "postprocessing", "writing"]


def test_profile_times_every_stage_of_a_case(tmp_path, capsys):
    from kitsseg.inference.run import predict_inputs

    hu = np.full((40, 60, 60), -LEVEL_HU, np.int16)
    hu[10:30, 20:40, 15:35] = 0  # one 'kidney' for the oracles
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "scan.nii.gz"))
    predictor = Predictor(paper_plans(cysts=False), [coarse_oracle], [fine_oracle(3)])
    assert predict_inputs(predictor, tmp_path / "scan.nii.gz", tmp_path / "out", quiet=True, profile=True) == 0
    profile = json.loads((tmp_path / "out" / "profile.json").read_text())["scan"]
    assert [name for name, _, _ in profile["stages"]] == STAGES
    assert all(seconds >= 0 for _, seconds, _ in profile["stages"])
    peaks = [peak for _, _, peak in profile["stages"]]
    assert peaks == [None] * len(STAGES) or (min(peaks) > 10 ** 7 and profile["peak_rss_bytes"] >= max(peaks))
    assert "fine networks" in capsys.readouterr().out


def test_predict_command_profile_flag(tmp_path, tiny_models, phantom_raw):
    from kitsseg.cli import predict_main

    image = phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"
    assert predict_main(["-i", str(image), "-o", str(tmp_path), "-m", str(tiny_models), "--device", "cpu",
                         "--quiet", "--profile"]) == 0
    stages = [name for name, _, _ in json.loads((tmp_path / "profile.json").read_text())["case_00000"]["stages"]]
    assert stages[:3] == STAGES[:3] and stages[-1] == "writing"


def test_predict_command_refuses_a_lesion_weight_of_zero(tmp_path, tiny_models, phantom_raw, capsys):
    from kitsseg.cli import predict_main

    image = phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"
    assert predict_main(["-i", str(image), "-o", str(tmp_path / "out"), "-m", str(tiny_models), "--device", "cpu",
                         "--quiet", "--lesion-weight", "0"]) != 0
    assert capsys.readouterr().err.strip().splitlines() == ["error: lesion weight 0.0: must be above 0"]
    assert not (tmp_path / "out").exists()



def test_predict_command_flags_override_postprocessing_json_field_by_field(tmp_path, tiny_models, monkeypatch):
    """--no-postprocess turns off the component filter and keeps postprocessing.json's lesion weight;
    --lesion-weight replaces the weight and keeps the file's component decision."""
    import shutil

    import kitsseg.inference.run
    from kitsseg.cli import predict_main
    from kitsseg.postprocessing import PostprocessConfig

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / "postprocessing.json").write_text(
        json.dumps({"keep_largest_kidney_component": True, "lesion_weight": 2.5}))
    used = []
    monkeypatch.setattr(kitsseg.inference.run, "predict_inputs",
                        lambda predictor, *args: used.append(predictor.postprocess) or 0)
    for flags in ([], ["--no-postprocess"], ["--lesion-weight", "1.5"], ["--no-postprocess", "--lesion-weight", "1"]):
        assert predict_main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(models), "--device", "cpu",
                             "--quiet", *flags]) == 0
    assert used == [PostprocessConfig(True, 2.5), PostprocessConfig(False, 2.5), PostprocessConfig(True, 1.5),
                    PostprocessConfig(False, 1.0)]

def middle_third(x):
    """Coarse oracle: the 'kidney region' is the middle third of each axis (a plausible few litres)."""
    inside = torch.zeros_like(x)
    inside[(Ellipsis, *(slice(n // 3, 2 * n // 3) for n in x.shape[2:]))] = 1
    return torch.cat([-inside, inside], 1) * 20


@pytest.mark.parametrize("relative", ["real-ct/example_ct.nii.gz", "real-ct/example_ct_dicom"])
def test_output_geometry_and_position_on_real_ct(shared_data, relative):
    from kitsseg.io import read_image
    image = read_image(shared_data / relative)
    plans = paper_plans(cysts=False)
    # the coarse oracle's box is wider than any kidney (167 mm on the DICOM series): no length limit here
    plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), max_kidney_extent_mm=(0.0, 0.0, 0.0))
    bone = lambda x: torch.cat([(x <= 0.5).float(), -torch.ones_like(x), (x > 0.5).float()], 1) * 20  # noqa: E731
    predictor = Predictor(plans, [middle_third], [bone])
    out = predictor.predict(image)
    assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
           (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    # the 'fine network' marks normalised values > 0.5 (> 325 HU): bone, found where it is in the input
    expected = sitk.GetArrayFromImage(image) > 325
    got = sitk.GetArrayFromImage(out) > 0  # the largest bone component
    assert got.sum() > 1000
    assert expected[got].mean() >= 0.9  # marked voxels are bone in the input array, at the same place
    assert expected[:, ::-1][got].mean() < 0.2  # which a flipped axis would not give


def tiny_checkpoints(results, plans, folds=("0",)):
    for stage in (COARSE, FINE):
        for fold in folds:
            torch.manual_seed(int(fold) if fold.isdigit() else 9)
            network = VBNet(plans.stage(stage).network)
            save_checkpoint({"state_dict": network.state_dict(), "plans": plans.to_dict(), "stage": stage,
                             "epoch": 0}, results / stage / f"fold_{fold}" / "checkpoint_final.pt")


def test_predict_command_reports_a_corrupt_file_and_goes_on(tmp_path, phantom_raw):
    plans_data = paper_plans(cysts=False).to_dict()
    for stage in plans_data["stages"].values():
        stage["network"].update(stem_channels=4, down_channels=[8, 16, 32, 64], up_channels=[64, 32, 16, 8],
                                bottleneck_min_channels=16)
        stage["patch_size"] = [32, 32, 32]
    tiny_checkpoints(tmp_path / "models", Plans.from_dict(plans_data))
    inputs = tmp_path / "in put ü"  # spaces and non-ASCII in paths
    inputs.mkdir()
    for case in ("case_00000", "case_00001"):
        (inputs / f"{case}_0000.nii.gz").write_bytes((phantom_raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
    data = (phantom_raw / "imagesTr" / "case_00002_0000.nii.gz").read_bytes()
    (inputs / "broken_0000.nii.gz").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kitsseg.cli", "predict", "-i", str(inputs), "-o", str(out),
               "-m", str(tmp_path / "models"), "--device", "cpu", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "broken_0000.nii.gz: truncated" in result.stderr and "Traceback" not in result.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["case", "status", "kidneys_found", "kidney_ml", "tumor_ml", "right_kidney_ml",
                                     "left_kidney_ml", "seconds"]
    assert sorted(summary["case"]) == ["broken", "case_00000", "case_00001"]
    assert summary.set_index("case").loc["broken", "status"].startswith("error:")
    for case in ("case_00000", "case_00001"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        src = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == src.GetSize() and pred.GetPixelID() == sitk.sitkUInt8
    assert not (out / "broken.nii.gz").exists()
    run_record = json.loads((out / "kitsseg_run.json").read_text())
    assert run_record["folds"] == ["0"] and run_record["arguments"]["output"] == str(out)
    assert [c["sha256"] for c in run_record["checkpoints"]] == [
        hashlib.sha256((tmp_path / "models" / stage / "fold_0" / "checkpoint_final.pt").read_bytes()).hexdigest()
        for stage in ("3d_coarse", "3d_fine")]
    assert run_record["plans_sha256"] == plans_hash(Plans.from_dict(plans_data))
    # a second run keeps what exists, with the volumes the first run measured
    first = summary.set_index("case")
    again = subprocess.run(command, capture_output=True, text=True)
    second = pd.read_csv(out / "summary.csv").set_index("case")
    assert again.returncode == 1
    for case in ("case_00000", "case_00001"):
        assert second.loc[case, "status"] == first.loc[case, "status"]
        assert second.loc[case, ["kidney_ml", "tumor_ml"]].tolist() == first.loc[case, ["kidney_ml", "tumor_ml"]].tolist()
    # after a killed run (no summary row yet), the volumes are read back from the kept label map
    (out / "summary.csv").unlink()
    subprocess.run(command, capture_output=True, text=True)
    third = pd.read_csv(out / "summary.csv").set_index("case")
    assert third.loc["case_00001", "status"] == "ok: output of a previous run"
    assert third.loc["case_00001", ["kidney_ml", "tumor_ml"]].tolist() == first.loc["case_00001", ["kidney_ml", "tumor_ml"]].tolist()


@pytest.mark.parametrize("flags, mirrored", [([], False), (["--tta"], True)])
def test_predict_command_mirrors_only_with_tta(tmp_path, tiny_models, phantom_raw, monkeypatch, flags, mirrored):
    """kits_predict runs one pass per fold unless --tta asks for the 8 mirrorings (benchmarks/RESULTS.md,
    recipe log entry 10: no gain on the test split for 2.5x the time)."""
    from kitsseg.cli import predict_main
    from kitsseg.inference import torch_engine

    asked = []
    monkeypatch.setattr(torch_engine, "mirrorings", lambda tta: asked.append(tta) or mirrorings(tta))
    image = phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"
    assert predict_main(["-i", str(image), "-o", str(tmp_path), "-m", str(tiny_models), "--device", "cpu",
                         "--quiet", *flags]) == 0
    assert asked and set(asked) == {mirrored}
    assert json.loads((tmp_path / "kitsseg_run.json").read_text())["arguments"]["tta"] is mirrored


def test_predict_command_keeps_outputs_only_from_the_same_model(tmp_path, tiny_models, phantom_raw, capsys):
    """A rerun into the same folder keeps existing outputs; with other checkpoints, lesion weight or --tta it
    stops with one line naming the difference and leaves the folder as it was; --overwrite redoes the cases."""
    import shutil

    from kitsseg.cli import predict_main

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    image = phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"
    out = tmp_path / "out"
    command = ["-i", str(image), "-o", str(out), "-m", str(models), "--device", "cpu", "--quiet"]
    assert predict_main(command) == 0
    label_map = (out / "case_00000.nii.gz").read_bytes()
    assert predict_main(command) == 0
    assert "keeping 1 existing prediction(s)" in capsys.readouterr().out
    record = (out / "kitsseg_run.json").read_bytes()
    assert predict_main([*command, "--tta"]) == 1
    assert "made with other --tta (off before, on now); pass --overwrite" in capsys.readouterr().err
    assert predict_main([*command, "--lesion-weight", "2"]) == 1
    assert "made with other lesion weight (1 before, 2 now); pass --overwrite" in capsys.readouterr().err
    fine = models / "3d_fine" / "fold_0" / "checkpoint_final.pt"
    state = torch.load(fine, weights_only=True)
    state["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, fine)
    assert predict_main(command) == 1
    assert "made with other checkpoints" in capsys.readouterr().err
    assert (out / "kitsseg_run.json").read_bytes() == record and (out / "case_00000.nii.gz").read_bytes() == label_map
    assert predict_main([*command, "--overwrite"]) == 0
    new_record = json.loads((out / "kitsseg_run.json").read_text())
    assert new_record["checkpoints"][1]["sha256"] == hashlib.sha256(fine.read_bytes()).hexdigest()
