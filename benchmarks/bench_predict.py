"""Inference benchmark: kits_predict vs nnUNetv2_predict (3d_fullres, 3d_lowres) on CPU, side by side.

Renders case_00002 (512x512x261), case_00004 (64 slices) and case_00151 (1059 slices) with
../shared/bench/render_ct.py and times one case at a time in its own process (process start,
reading and writing included), measuring peak RSS summed over all processes; kitsseg runs
`--repeats` times per case (median and range) and prints its stage-by-stage breakdown
(`kits_predict --profile`: seconds and peak RSS per stage).

kitsseg: with `--model-dir` the trained cascade runs as `kits_predict` (one fold, no TTA).
Without it, untrained VB-Nets of the paper topology run (time does not depend on the weights),
and the coarse net's output is replaced by the ground-truth kidney mask at 6 mm so that the
VOIs, and hence the fine stage's work, have their real size. That mask is computed before any
timed run and read by the timed process from a .npy file: a real run does not resample a
reference label map, so neither does the timed one.

`--engines torch onnxruntime` runs the working tree's kitsseg with each engine (the engine column):
for ONNX Runtime the models are first exported as a bundle (kits_export, untimed) and run from it
with `kits_predict --engine onnxruntime` (or, untrained, the same coarse-mask substitution in
numpy: that process never imports torch).

`--before-ref COMMIT` also runs that commit's kitsseg (its `kitsseg` and `plans` folders,
extracted with git archive, first on PYTHONPATH; with its own planning and untrained models)
in the same protocol, alternating with the working tree's per case and repeat: the "before"
column of the same run.

nnU-Net v2 (`pip install '.[bench]'`): checkpoints with untrained weights are built from its own
plans (as a 1-iteration training run would leave them); a run longer than `--nnunet-seconds` is
stopped and extrapolated from nnU-Net's progress bar (tiles done, seconds per tile, tiles in total).

    python benchmarks/bench_predict.py [--workdir bench_work] [--model-dir DIR] [--nnunet-seconds 300]
        [--skip-nnunet] [--repeats 3] [--cases case_00004 ...] [--before-ref COMMIT]
        [--engines torch onnxruntime]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_description, rendered_kits_source, run_measured  # noqa: E402

CASES = ["case_00002", "case_00004", "case_00151"]
NNUNET_CASES = ["case_00002"]
NNUNET_ID = 502
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


# ---- kitsseg ----------------------------------------------------------------------------------------
def _convert_sources(source: Path, root: Path) -> None:
    """The rendered cases (`source`, KiTS layout) as a raw dataset under `root` (for the planners)."""
    if not (root / "kitsseg_predict_data" / "raw" / "KiTS19" / "dataset.json").exists():
        subprocess.run(["kits_convert", "kits", str(source), "--data-root", str(root / "kitsseg_predict_data"),
                        "--quiet"], check=True)


def _prepare(source: Path, root: Path, env: dict | None = None) -> None:
    """Raw dataset, plans and untrained models under `root`, made by the kitsseg that `env` imports."""
    subprocess.run([sys.executable, str(HERE), "--prepare", str(source), str(root)], env=env, check=True)


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


def _oracle_masks(workdir: Path, labels: dict[str, Path]) -> dict[str, Path]:
    """The true kidney masks at the coarse spacing (the coarse net's substitute), as .npy files:
    computed here, before any timed run."""
    import numpy as np
    from kitsseg.io import load_volume
    from kitsseg.paths import DatasetPaths
    from kitsseg.planning import COARSE, load_plans
    from kitsseg.resampling import resample_labels, shape_at_spacing

    coarse = load_plans(DatasetPaths(workdir / "kitsseg_predict_data", "KiTS19").plans).stage(COARSE)
    masks = {}
    for case, label in labels.items():
        truth, props = load_volume(label)
        masks[case] = workdir / "oracle_masks" / f"{case}.npy"
        masks[case].parent.mkdir(exist_ok=True)
        np.save(masks[case], resample_labels(truth > 0, shape_at_spacing(props.shape, props.spacing_mm,
                                                                          coarse.spacing_mm), [0, 1]))
    return masks


def child_onnx(case_id: str, image: Path, mask_file: Path, out: Path, bundle: Path) -> None:
    """`child` with the ONNX Runtime engine from a bundle: the coarse session runs, its output is replaced
    by the ground truth's mask, in numpy (this process does not import torch)."""
    import numpy as np
    from kitsseg.deploy.bundle import predictor_from_bundle
    from kitsseg.inference.run import predict_case
    from kitsseg.io import read_properties
    from kitsseg.planning import COARSE
    from kitsseg.profiling import Profile
    from kitsseg.resampling import shape_at_spacing

    predictor = predictor_from_bundle(bundle, "onnxruntime", ["0"])
    props = read_properties(image)
    shape = shape_at_spacing(props.shape, props.spacing_mm, predictor.plans.stage(COARSE).spacing_mm)
    mask = np.load(mask_file).astype(np.float32)
    session = predictor.coarse_models[0]

    class CoarseWithTrueMask:
        def get_inputs(self):
            return session.get_inputs()

        def run(self, outputs, feeds):
            session.run(outputs, feeds)  # the real work, result discarded
            x = next(iter(feeds.values()))
            padded = np.zeros(x.shape[2:], np.float32)
            padded[: shape[0], : shape[1], : shape[2]] = mask
            return [np.stack([1 - padded, padded])[None] * 20]

    predictor.coarse_models = [CoarseWithTrueMask()]
    profile = Profile()
    with profile.active():
        row = predict_case(predictor, image, out / f"{case_id}.nii.gz")
    print(json.dumps({"row": row, "profile": profile.to_dict()}))


def _bundle(root: Path, models: Path, folds: list[str], env: dict | None) -> Path:
    """The models exported as a bundle for the ONNX Runtime engine (once, untimed)."""
    bundle = root / f"{models.name}.kitsseg.zip"
    if not bundle.exists():
        subprocess.run(["kits_export", "-m", str(models), "-f", *folds, "-o", str(bundle), "--quiet"], env=env,
                       check=True)
    return bundle


def child(case_id: str, image: Path, mask_file: Path, out: Path, models: Path) -> None:
    """One case in this process: untrained nets, coarse output replaced by the ground truth's mask.
    Prints the case's summary row and, where this kitsseg has one, its profile (JSON)."""
    import numpy as np
    import torch
    from kitsseg.inference.predictor import Predictor
    from kitsseg.inference.run import predict_case
    from kitsseg.io import read_properties
    from kitsseg.planning import COARSE
    from kitsseg.resampling import shape_at_spacing

    predictor = Predictor.from_model_dir(models, ["0"], "cpu")
    props = read_properties(image)  # a header read, no voxels
    shape = shape_at_spacing(props.shape, props.spacing_mm, predictor.plans.stage(COARSE).spacing_mm)
    mask = torch.from_numpy(np.load(mask_file).astype(np.float32))
    if tuple(mask.shape) != tuple(shape):
        raise SystemExit(f"{mask_file}: mask of shape {tuple(mask.shape)}, the coarse grid is {shape}")
    network = predictor.coarse_models[0]

    def coarse_with_true_mask(x: torch.Tensor) -> torch.Tensor:
        network(x)  # the real work, result discarded
        padded = torch.zeros(x.shape[2:])
        padded[: shape[0], : shape[1], : shape[2]] = mask
        return torch.stack([1 - padded, padded])[None] * 20

    predictor.coarse_models = [coarse_with_true_mask]
    try:
        from kitsseg.profiling import Profile
    except ImportError:  # a kitsseg from before --profile
        print(json.dumps({"row": predict_case(predictor, image, out / f"{case_id}.nii.gz")}))
        return
    profile = Profile()
    with profile.active():
        row = predict_case(predictor, image, out / f"{case_id}.nii.gz")
    print(json.dumps({"row": row, "profile": profile.to_dict()}))


def _kitsseg_case(workdir: Path, version: dict, case_id: str, image: Path, mask: Path, model_dir: Path | None) -> dict:
    """One timed run of `version` (name, root of its models, env) on a case: seconds, peak RSS, profile."""
    out = workdir / f"kitsseg_predictions_{version['name']}"
    out.mkdir(exist_ok=True)
    log = workdir / f"kitsseg_{version['name']}_{case_id}.log"
    onnx = version.get("engine") == "onnxruntime"
    if model_dir:
        models = _bundle(workdir, model_dir, ["0"], version["env"]) if onnx else model_dir
        command = ["kits_predict", "-i", str(_single_input(workdir, case_id, image)), "-o", str(out), "-m",
                   str(models), "-f", "0", "--device", "cpu", "--overwrite", "--quiet",
                   *(["--engine", "onnxruntime"] if onnx else []), *(["--profile"] if version["profiles"] else [])]
    else:
        models = version["root"] / "kitsseg_untrained"
        models = _bundle(workdir, models, ["0"], version["env"]) if onnx else models
        command = [sys.executable, str(HERE), "--child-onnx" if onnx else "--child", case_id, str(image), str(mask),
                   str(out), str(models)]
    seconds, rss, code = run_measured(command, env=version["env"], log=log)
    if code:
        raise SystemExit(f"kitsseg ({version['name']}) failed on {case_id}, see {log}")
    if model_dir:
        profiles = json.loads((out / "profile.json").read_text()) if version["profiles"] else {}
        profile = profiles.get(case_id)
    else:
        profile = json.loads(log.read_text().strip().splitlines()[-1]).get("profile")
    return {"seconds": seconds, "rss": rss, "profile": profile}


def _before_version(workdir: Path, ref: str, source: Path) -> dict:
    """`ref`'s kitsseg and plans, extracted beside the workdir, planned and with untrained models of its own."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    root = workdir / f"before_{sha}"
    code = root / "code"
    if not (code / "kitsseg" / "__init__.py").exists():
        code.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "kitsseg", "plans"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    _prepare(source, root, env)
    return {"name": f"before_{sha}", "root": root, "env": env, "profiles": False}


def _median_range(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v / scale for v in values]
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def _print_kitsseg(runs: dict, versions: list[dict], cases: list[str]) -> None:
    """Wall time and peak RSS per case and version (median [min-max] over the repeats)."""
    print(f"{'case':<11} {'kitsseg':<16} {'engine':<12} {'wall s, median [range]':>24} {'peak RSS GB':>20}")
    for case in cases:
        for version in versions:
            r = runs[(version["name"], case)]
            print(f"{case:<11} {version['name']:<16} {version.get('engine', 'torch'):<12} "
                  f"{_median_range([x['seconds'] for x in r]):>24} {_median_range([x['rss'] for x in r], 1e9, 2):>20}")
        if len(versions) == 2:
            before, after = (statistics.median(x["seconds"] for x in runs[(v["name"], case)]) for v in versions)
            print(f"{case:<11} {'speed-up':<16} {before / after:23.1f}x")


def _print_breakdown(case: str, runs: list[dict]) -> None:
    """Seconds and peak RSS per stage (median [min-max] over the runs); the rest of the wall time is
    the process's start (interpreter, imports, models)."""
    from kitsseg.profiling import format_table

    names = [name for name, _, _ in runs[0]["profile"]["stages"]]
    stage = {name: [[s, p] for run in runs for n, s, p in run["profile"]["stages"] if n == name] for name in names}
    rows = [(name, _median_range([s for s, _ in stage[name]], digits=2),
             "-" if None in (p for _, p in stage[name]) else _median_range([p for _, p in stage[name]], 1e9, 2))
            for name in names]
    start = [run["seconds"] - sum(s for _, s, _ in run["profile"]["stages"]) for run in runs]
    rows += [("rest: process start, imports, models", _median_range(start, digits=2), ""),
             ("wall (process)", _median_range([run["seconds"] for run in runs], digits=2),
              _median_range([run["rss"] for run in runs], 1e9, 2))]
    print(f"\n{case}, {len(runs)} runs, median [min-max]:")
    print(format_table(rows))


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
    parser.add_argument("--repeats", type=int, default=3, help="timed kitsseg runs per case (default: 3)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES,
                        help="a subset of the cases (planned and prepared on their own, under WORKDIR/subset_*)")
    parser.add_argument("--before-ref", metavar="COMMIT", help="also time this commit's kitsseg, alternating "
                        "with the working tree's (the before column)")
    parser.add_argument("--engines", nargs="+", choices=["torch", "onnxruntime"], default=["torch"],
                        help="engines to time the working tree's kitsseg with (default: torch)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-onnx", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case_id, image, mask, out, models = args.child
        return child(case_id, Path(image), Path(mask), Path(out), Path(models))
    if args.child_onnx:
        case_id, image, mask, out, bundle = args.child_onnx
        return child_onnx(case_id, Path(image), Path(mask), Path(out), Path(bundle))
    if args.prepare:
        _convert_sources(*args.prepare)
        _untrained_models(args.prepare[1])
        return None

    cases = [c for c in CASES if c in args.cases]
    root = args.workdir if cases == CASES else args.workdir / ("subset_" + "_".join(cases))
    render_dir, source = rendered_kits_source(args.workdir, str(root.relative_to(args.workdir) / "predict_source"),
                                              cases)
    images = {c: render_dir / c / "imaging.nii.gz" for c in cases}
    _prepare(source, root)
    masks = _oracle_masks(root, {c: render_dir / c / "segmentation.nii.gz" for c in cases})
    versions = [{"name": "current" if engine == "torch" else f"current_{engine}", "root": root, "env": None,
                 "profiles": True, "engine": engine} for engine in args.engines]
    if args.before_ref:
        versions.insert(0, _before_version(root, args.before_ref, source))
    runs = {(v["name"], c): [] for v in versions for c in cases}
    for _ in range(args.repeats):
        for case in cases:
            for version in versions:
                runs[(version["name"], case)].append(_kitsseg_case(root, version, case, images[case], masks[case],
                                                                   args.model_dir))
    theirs = {}
    if not args.skip_nnunet and shutil.which("nnUNetv2_predict"):
        env = _nnunet_models(root)
        for configuration in ("3d_fullres", "3d_lowres"):
            for case in (c for c in NNUNET_CASES if c in cases):
                theirs[(configuration, case)] = _nnunet_case(root, env, case, images[case], configuration,
                                                             args.nnunet_seconds)
    print(f"\nInference on CPU, one fold, no TTA, one case per process, on {machine_description()}")
    print("kitsseg: " + ("trained models " + str(args.model_dir) if args.model_dir else
                         "untrained paper VB-Nets, coarse output replaced by the true kidney mask (real VOI sizes)"))
    _print_kitsseg(runs, versions, cases)
    if theirs:
        print(f"\n{'case':<11} {'method':<22} {'wall s':>9} {'peak RSS GB':>12} {'nnU-Net/kitsseg':>16}  note")
    for (configuration, case), r in theirs.items():
        ours = statistics.median(x["seconds"] for x in runs[(versions[-1]["name"], case)])
        print(f"{case:<11} {'nnU-Net ' + configuration:<22} {r['seconds']:9.1f} {r['rss'] / 1e9:12.2f} "
              f"{r['seconds'] / ours:15.1f}x  {r['note']}")
    for version in (v for v in versions if v["profiles"]):
        for case in cases:
            print(f"\n{version['name']} (engine {version['engine']}):", end="")
            _print_breakdown(case, runs[(version["name"], case)])


if __name__ == "__main__":
    main()
