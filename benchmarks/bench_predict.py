"""Inference benchmark: kits_predict vs nnUNetv2_predict (3d_fullres, 3d_lowres) on CPU, side by side.

Renders case_00002 (512x512x261), case_00004 (64 slices) and case_00151 (1059 slices) with
../shared/bench/render_ct.py and times one case at a time in its own process (reading and
writing included), measuring peak RSS summed over all processes.

kitsseg: with `--model-dir` the trained cascade runs as `kits_predict` (one fold, no TTA).
Without it, untrained VB-Nets of the paper topology run (time does not depend on the weights),
and the coarse net's output is replaced by the ground-truth kidney mask at 6 mm so that the
VOIs, and hence the fine stage's work, have their real size.

nnU-Net v2 (`pip install '.[bench]'`): checkpoints with untrained weights are built from its own
plans (as a 1-iteration training run would leave them); a run longer than `--nnunet-seconds` is
stopped and extrapolated from nnU-Net's progress bar (tiles done, seconds per tile, tiles in total).

    python benchmarks/bench_predict.py [--workdir bench_work] [--model-dir DIR] [--nnunet-seconds 300]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_description, rendered_kits_source, run_measured  # noqa: E402

CASES = ["case_00002", "case_00004", "case_00151"]
NNUNET_CASES = ["case_00002"]
NNUNET_ID = 502
HERE = Path(__file__).resolve()


# ---- kitsseg ----------------------------------------------------------------------------------------
def _convert_sources(workdir: Path) -> None:
    """The rendered cases as a raw dataset (for kitsseg's and nnU-Net's planners)."""
    if not (workdir / "kitsseg_predict_data" / "raw" / "KiTS19" / "dataset.json").exists():
        subprocess.run(["kits_convert", "kits", str(workdir / "predict_source"), "--data-root",
                        str(workdir / "kitsseg_predict_data"), "--quiet"], check=True)


def _untrained_models(workdir: Path) -> Path:
    """Untrained paper-topology checkpoints with plans from these cases' fingerprint."""
    import torch
    from kitsseg.checkpoint import save_checkpoint
    from kitsseg.network.vbnet import VBNet
    from kitsseg.paths import DatasetPaths
    from kitsseg.plan_and_preprocess import plan_and_preprocess
    from kitsseg.planning import STAGES, load_plans

    models = workdir / "kitsseg_untrained"
    if all((models / s / "fold_0" / "checkpoint_final.pt").exists() for s in STAGES):
        return models
    paths = DatasetPaths(workdir / "kitsseg_predict_data", "KiTS19")
    plan_and_preprocess(paths, steps=["fingerprint", "plan"], num_workers=1, quiet=True)
    plans = load_plans(paths.plans)
    for stage in STAGES:
        torch.manual_seed(0)
        network = VBNet(plans.stage(stage).network)
        save_checkpoint({"state_dict": network.state_dict(), "plans": plans.to_dict(), "stage": stage, "epoch": 0},
                        models / stage / "fold_0" / "checkpoint_final.pt")
    return models


def child(case_id: str, image: Path, label: Path, out: Path, models: Path) -> None:
    """One case in this process: untrained nets, coarse output replaced by the ground truth."""
    import numpy as np
    import torch
    from kitsseg.inference.predictor import Predictor
    from kitsseg.inference.run import predict_case
    from kitsseg.io import load_volume
    from kitsseg.planning import COARSE
    from kitsseg.resampling import resample_labels, shape_at_spacing

    predictor = Predictor.from_model_dir(models, ["0"], "cpu")
    truth, props = load_volume(label)
    coarse = predictor.plans.stage(COARSE)
    shape = shape_at_spacing(props.shape, props.spacing_mm, coarse.spacing_mm)
    mask = torch.from_numpy(resample_labels(truth > 0, shape, [0, 1]).astype(np.float32))
    del truth
    network = predictor.coarse_models[0]

    def coarse_with_true_mask(x: torch.Tensor) -> torch.Tensor:
        network(x)  # the real work, result discarded
        padded = torch.zeros(x.shape[2:])
        padded[: shape[0], : shape[1], : shape[2]] = mask
        return torch.stack([1 - padded, padded])[None] * 20

    predictor.coarse_models = [coarse_with_true_mask]
    print(json.dumps(predict_case(predictor, image, out / f"{case_id}.nii.gz")))


def _kitsseg_case(workdir: Path, case_id: str, image: Path, label: Path, model_dir: Path | None) -> dict:
    out = workdir / "kitsseg_predictions"
    out.mkdir(exist_ok=True)
    if model_dir:
        command = ["kits_predict", "-i", str(_single_input(workdir, case_id, image)), "-o", str(out), "-m", str(model_dir), "-f", "0",
                   "--device", "cpu", "--overwrite", "--quiet"]
    else:
        command = [sys.executable, str(HERE), "--child", case_id, str(image), str(label), str(out),
                   str(workdir / "kitsseg_untrained")]
    seconds, rss, code = run_measured(command, log=workdir / f"kitsseg_{case_id}.log")
    if code:
        raise SystemExit(f"kitsseg failed on {case_id}, see {workdir / f'kitsseg_{case_id}.log'}")
    return {"seconds": seconds, "rss": rss}


# ---- nnU-Net ------------------------------------------------------------------------------------------
def _nnunet_models(workdir: Path) -> dict:
    """Plans from nnU-Net's own planner on these cases, and untrained checkpoints for both configurations."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = workdir / "nnunet_predict"
    env = {**os.environ, "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
           "nnUNet_results": str(base / "results")}
    name = f"Dataset{NNUNET_ID}_KiTS19"
    if not (base / "preprocessed" / name / "nnUNetPlans.json").exists():
        (base / "raw").mkdir(parents=True, exist_ok=True)
        raw = base / "raw" / name
        if not raw.exists():
            raw.symlink_to((workdir / "kitsseg_predict_data" / "raw" / "KiTS19").resolve())
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(NNUNET_ID), "--no_pp", "-npfp", "2"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    plans = load_json(str(base / "preprocessed" / name / "nnUNetPlans.json"))
    dataset = load_json(str(base / "preprocessed" / name / "dataset.json"))
    manager = PlansManager(plans)
    for configuration in ("3d_fullres", "3d_lowres"):
        folder = base / "results" / name / f"nnUNetTrainer__nnUNetPlans__{configuration}"
        if (folder / "fold_0" / "checkpoint_final.pth").exists():
            continue
        (folder / "fold_0").mkdir(parents=True, exist_ok=True)
        network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration(configuration), 1,
                                                            len(dataset["labels"]), enable_deep_supervision=False)
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / "fold_0" / "checkpoint_final.pth")
        shutil.copy(base / "preprocessed" / name / "nnUNetPlans.json", folder / "plans.json")
        shutil.copy(base / "preprocessed" / name / "dataset.json", folder / "dataset.json")
    return env


def _progress(log: Path) -> tuple[int, int, float] | None:
    """Last (tiles done, tiles in total, seconds per tile) from nnU-Net's tqdm bar."""
    found = re.findall(r"(\d+)/(\d+) \[[^\]]*?, +([\d.]+)(s/it|it/s)\]", log.read_text(errors="replace"))
    if not found:
        return None
    done, total, rate, unit = found[-1]
    return int(done), int(total), float(rate) if unit == "s/it" else 1 / float(rate)


def _single_input(workdir: Path, case_id: str, image: Path) -> Path:
    """A folder holding just this case as <case>_0000.nii.gz (the name both tools expect)."""
    single = workdir / "predict_one" / case_id
    shutil.rmtree(single, ignore_errors=True)
    single.mkdir(parents=True)
    (single / f"{case_id}_0000.nii.gz").symlink_to(image.resolve())
    return single


def _nnunet_case(workdir: Path, env: dict, case_id: str, image: Path, configuration: str, limit: float) -> dict:
    single = _single_input(workdir, case_id, image)
    out = workdir / f"nnunet_{configuration}_predictions"
    log = workdir / f"nnunet_{configuration}_{case_id}.log"
    command = ["timeout", "-s", "KILL", str(int(limit)), "nnUNetv2_predict", "-i", str(single), "-o", str(out),
               "-d", str(NNUNET_ID), "-c", configuration, "-f", "0", "--disable_tta", "-device", "cpu",
               "-npp", "1", "-nps", "1"]
    seconds, rss, code = run_measured(command, env=env, log=log)
    if code == 0:
        return {"seconds": seconds, "rss": rss, "note": "measured"}
    if code not in (137, -9):  # not our time limit: nnU-Net failed
        raise SystemExit(f"nnUNetv2_predict failed (exit {code}), see {log}")
    progress = _progress(log)
    if progress is None:
        return {"seconds": float("nan"), "rss": rss, "note": f"stopped at {limit:.0f} s before any tile"}
    done, total, per_tile = progress
    estimate = seconds + (total - done) * per_tile
    return {"seconds": estimate, "rss": rss,
            "note": f"extrapolated: {done}/{total} tiles in {seconds:.0f} s, {per_tile:.1f} s/tile"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_work"))
    parser.add_argument("--model-dir", type=Path, help="trained kitsseg models (default: untrained, see above)")
    parser.add_argument("--nnunet-seconds", type=float, default=300, help="wall-clock limit per nnU-Net run")
    parser.add_argument("--skip-nnunet", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case_id, image, label, out, models = args.child
        return child(case_id, Path(image), Path(label), Path(out), Path(models))

    render_dir, _ = rendered_kits_source(args.workdir, "predict_source", CASES)
    images = {c: render_dir / c / "imaging.nii.gz" for c in CASES}
    labels = {c: render_dir / c / "segmentation.nii.gz" for c in CASES}
    _convert_sources(args.workdir)
    if not args.model_dir:
        _untrained_models(args.workdir)
    ours = {c: _kitsseg_case(args.workdir, c, images[c], labels[c], args.model_dir) for c in CASES}
    theirs = {}
    if not args.skip_nnunet and shutil.which("nnUNetv2_predict"):
        env = _nnunet_models(args.workdir)
        for configuration in ("3d_fullres", "3d_lowres"):
            for case in NNUNET_CASES:
                theirs[(configuration, case)] = _nnunet_case(args.workdir, env, case, images[case], configuration,
                                                             args.nnunet_seconds)
    print(f"\nInference on CPU, one fold, no TTA, one case per process, on {machine_description()}")
    print("kitsseg: " + ("trained models " + str(args.model_dir) if args.model_dir else
                         "untrained paper VB-Nets, coarse output replaced by the true kidney mask (real VOI sizes)"))
    print(f"{'case':<11} {'method':<22} {'wall s':>9} {'peak RSS GB':>12} {'nnU-Net/kitsseg':>16}  note")
    for case in CASES:
        print(f"{case:<11} {'kitsseg':<22} {ours[case]['seconds']:9.1f} {ours[case]['rss'] / 1e9:12.2f}")
        for configuration in ("3d_fullres", "3d_lowres"):
            if (configuration, case) in theirs:
                r = theirs[(configuration, case)]
                print(f"{case:<11} {'nnU-Net ' + configuration:<22} {r['seconds']:9.1f} {r['rss'] / 1e9:12.2f} "
                      f"{r['seconds'] / ours[case]['seconds']:15.1f}x  {r['note']}")


if __name__ == "__main__":
    main()
