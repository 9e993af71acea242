"""Command-line entry points: argument parsing only; each command calls one library function."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from kitsseg import __version__
from kitsseg.errors import KitssegError, use_one_line_warnings
from kitsseg.paths import DEFAULT_DATASET, DatasetPaths, resolve_data_root, resolve_dataset_name


def _parser(**kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser with `--version`."""
    parser = argparse.ArgumentParser(**kwargs)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _add_common(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        parser.add_argument("--data-root", metavar="ROOT",
                            help="data root (default: $KITSSEG_DATA, else ./kitsseg_data)")
        parser.add_argument("-d", "--dataset", default=DEFAULT_DATASET, metavar="NAME",
                            help=f"dataset folder under ROOT/raw, or its nnU-Net ID (220 finds "
                                 f"Dataset220_*) (default: {DEFAULT_DATASET})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")


def _arguments(args: argparse.Namespace) -> dict:
    """The parsed arguments as plain JSON values (for kitsseg_run.json)."""
    return {k: v for k, v in vars(args).items() if k not in ("quiet", "debug", "raw_argv")}


def _dataset_paths(args: argparse.Namespace) -> DatasetPaths:
    root = resolve_data_root(args.data_root)
    return DatasetPaths(root, resolve_dataset_name(root, args.dataset))


# packages of setup.cfg's extras: a command that needs one names the extra when it is missing
EXTRA_OF_MODULE = {"torch": "torch", "batchgenerators": "torch", "onnxruntime": "deploy", "highdicom": "deploy",
                   "onnx": "export"}


def _run(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None],
         argv: list[str] | None) -> int:
    """Parse, run, and turn user errors into one line on stderr and exit code 1."""
    args = parser.parse_args(argv)
    use_one_line_warnings()
    try:
        return int(command(args) or 0)
    except KitssegError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unwritable folder, full disk, ...: a user problem, not a bug
        if args.debug:
            raise
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an optional part not installed: say which extra brings it
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None or args.debug:
            raise
        print(f"error: {parser.prog} needs {exc.name}, which is not installed: pip install 'kitsseg[{extra}]'",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# kits_convert -----------------------------------------------------------------------------------

def _convert(args: argparse.Namespace) -> int:
    paths = _dataset_paths(args)
    if args.source == "kits":
        from dataset_conversion.kits import convert_kits
        result = convert_kits(Path(args.src), paths.raw, quiet=args.quiet)
        print(f"wrote {len(result.training)} training cases and {len(result.test)} test images to {paths.raw}")
        if result.failed:
            print(f"error: {len(result.failed)} case(s) not converted: {', '.join(result.failed)}", file=sys.stderr)
            return 1
        return 0
    from dataset_conversion.phantom import PhantomConfig, write_phantom_dataset
    config = PhantomConfig(shape=tuple(args.shape))
    case_ids = write_phantom_dataset(paths.raw, args.num_cases, args.seed, config, quiet=args.quiet)
    print(f"wrote {len(case_ids)} cases to {paths.raw}")
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_convert", description="Convert a source dataset into the raw format "
        "ROOT/raw/NAME/{dataset.json, imagesTr, labelsTr, imagesTs}.")
    sub = parser.add_subparsers(dest="source", required=True)
    kits = sub.add_parser("kits", help="official KiTS19/21/23 layout (SRC/case_XXXXX/imaging.nii.gz); cases "
                          "without segmentation.nii.gz (the test set) go to imagesTs")
    kits.add_argument("src", metavar="SRC", help="folder holding case_XXXXX folders (or data/case_XXXXX)")
    _add_common(kits)
    phantom = sub.add_parser("phantom", help="procedural CT phantoms with kidneys, tumours and cysts")
    phantom.add_argument("-n", "--num-cases", type=int, default=20, help="number of cases (default: 20)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    phantom.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"),
                         help="voxels per case, (z, y, x) (default: 64 128 128)")
    _add_common(phantom)
    return _run(parser, _convert, argv)


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["auto", "float32"], default="auto",
                        help="auto (default): mixed precision where the device runs it natively (float16 on CUDA, "
                             "bfloat16 on CPUs with AMX or AVX512-BF16, 2-4x faster there), else float32; "
                             "float32: always full precision")


def _add_lesion_weight(parser: argparse.ArgumentParser, default_note: str, default: bool = False) -> None:
    from kitsseg.postprocessing import LESION_WEIGHT

    parser.add_argument("--lesion-weight", type=float, metavar="W", default=LESION_WEIGHT if default else None,
                        help="factor of the tumour and cyst probabilities in the class decision (1 = plain argmax; "
                             f"higher calls more lesion: faint and partly found tumours grow, well-found ones get "
                             f"wider edges; default: {default_note}{LESION_WEIGHT:g})")


def _add_memory_budget(parser: argparse.ArgumentParser, note: str) -> None:
    from kitsseg.memory import MEMORY_ENV

    parser.add_argument("--memory-gb", type=float, metavar="GB",
                        help=f"RAM budget; a case whose arrays would exceed it stops early with an error "
                             f"({note}; default: ${MEMORY_ENV}, else the memory available at start)")


def _plan_and_preprocess(args: argparse.Namespace) -> int:
    from kitsseg.plan_and_preprocess import plan_and_preprocess

    paths = _dataset_paths(args)
    failed = plan_and_preprocess(paths, args.steps, args.num_workers, Path(args.preset), args.normalization,
                                 args.gpu_memory_gb, args.overwrite, args.quiet, args.memory_gb)
    if failed:
        print(f"error: {failed} case(s) failed preprocessing (see warnings above)", file=sys.stderr)
        return 1
    print(f"plans: {paths.plans}\npreprocessed: {paths.preprocessed}")
    return 0


def plan_and_preprocess_main(argv: list[str] | None = None) -> int:
    from kitsseg.plan_and_preprocess import STEPS
    from kitsseg.planning import DEFAULT_PRESET

    parser = _parser(
        prog="kits_plan_and_preprocess",
        description="Fingerprint a raw dataset, write plans.json, and cache both stages as .npz "
                    "(coarse: whole scan; fine: kidney regions only) plus splits_final.json.")
    _add_common(parser)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="steps to run (default: all three, in order)")
    parser.add_argument("-np", "--num-workers", type=int, default=2, metavar="WORKERS",
                        help="worker processes, one case each (default: 2)")
    parser.add_argument("--preset", default=str(DEFAULT_PRESET),
                        help="preset JSON with the method's choices (default: plans/vbnet_paper.json)")
    parser.add_argument("--normalization", choices=["window", "percentile"],
                        help="override the preset: 'window' = clip to window_hu, scale to [-1, 1]; "
                             "'percentile' = nnU-Net's CT scheme from the fingerprint")
    parser.add_argument("--gpu-memory-gb", type=float,
                        help="GPU memory budget that sets the batch size (default: the visible GPU's memory, "
                             "else 8)")
    _add_memory_budget(parser, "shared by the workers")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every step and case (default: skip what is up to date)")
    return _run(parser, _plan_and_preprocess, argv)


RECIPE_FLAGS = ("epochs", "iters_per_epoch", "val_iters", "lr", "loss", "num_workers", "augment_strength",
                "lesion_fraction", "outside_fraction", "lesion_paste_fraction", "time_budget_min")


def _train(args: argparse.Namespace) -> int:
    if args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.num_gpus, args.raw_argv)
    from kitsseg.training.trainer import TrainConfig, train

    paths = _dataset_paths(args)
    overrides = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    config = TrainConfig.from_plans(paths, args.stage, args.fold, device=args.device, precision=args.precision,
                                    seed=args.seed, **overrides)
    out = train(paths, config, resume=args.resume, quiet=args.quiet)
    print(f"trained model: {out}")
    return 0


def _launch_torchrun(num_processes: int, argv: list[str]) -> int:
    """Re-run this very command under torchrun with one process per GPU (or CPU worker)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={num_processes}", "-m", "kitsseg.cli", "train", *argv]
    return subprocess.call(command)


def train_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_train", description="Train one stage and one cross-validation fold of the VB-Net cascade "
        "into ROOT/results/NAME/STAGE/fold_K (checkpoints, training_log.csv, progress.png).")
    parser.add_argument("stage", choices=["3d_coarse", "3d_fine"], help="which network of the cascade")
    parser.add_argument("fold", choices=["0", "1", "2", "3", "4", "all"],
                        help="cross-validation fold from splits_final.json, or 'all' to train on every case")
    _add_common(parser)
    recipe = "(default: the stage's training recipe in plans.json"
    parser.add_argument("--epochs", type=int, help=f"epochs {recipe}, e.g. 100)")
    parser.add_argument("--iters-per-epoch", type=int, help=f"training iterations per epoch {recipe}, e.g. 250)")
    parser.add_argument("--val-iters", type=int, help=f"validation batches per epoch {recipe}, e.g. 20)")
    parser.add_argument("--lr", type=float, help=f"initial learning rate, AdamW, poly decay {recipe}, e.g. 3e-3)")
    parser.add_argument("--loss", choices=["gdice", "gdice_ce", "crop_dice_ce"],  # kitsseg.training.loss.LOSSES
                        help="gdice: generalized Dice over the batch (the paper); gdice_ce: plus cross-entropy; "
                             "crop_dice_ce: Dice per crop (each crop's lesion counts once) plus cross-entropy "
                             f"{recipe}, e.g. gdice_ce)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CUDA when available, else CPU")
    _add_precision(parser)
    parser.add_argument("--num-workers", type=int,
                        help=f"background augmentation processes; 0 = in the main process, deterministic {recipe}: "
                             "one per core, at most 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--augment", dest="augment_strength", type=float, metavar="STRENGTH",
                        help=f"augmentation strength, 0 turns it off {recipe}, e.g. 1)")
    parser.add_argument("--lesion-fraction", type=float,
                        help=f"fine stage: share of crops centred on tumour/cyst voxels {recipe}, e.g. 0.33)")
    parser.add_argument("--outside-fraction", type=float,
                        help="fine stage: share of crops centred anywhere in the VOI rather than in the "
                             f"kidney mask {recipe}, e.g. 0, the paper)")
    parser.add_argument("--lesion-paste", dest="lesion_paste_fraction", type=float, metavar="FRACTION",
                        help="fine stage: share of crops holding kidney that get a training case's tumour or cyst "
                             f"pasted into the kidney, rescaled to 1-30 ml {recipe}, e.g. 0)")
    parser.add_argument("--time-budget", dest="time_budget_min", type=float, metavar="MINUTES",
                        help="train until this much wall-clock time is spent; the learning rate follows it "
                             f"{recipe}; 0 = by epochs)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="data-parallel processes launched with torchrun (DDP; gloo on CPU)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="resume from checkpoint_latest.pt (model, optimizer, epoch, RNG, log); "
                             "refused when the recipe differs from the checkpoint's; starts afresh, with a "
                             "warning, when there is none yet")
    parser.set_defaults(raw_argv=list(sys.argv[1:] if argv is None else argv))
    return _run(parser, _train, argv)


def _predict(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kitsseg.inference.predictor import Predictor
    from kitsseg.inference.run import predict_inputs
    from kitsseg.memory import MemoryBudget
    from kitsseg.postprocessing import PostprocessConfig

    from kitsseg.deploy.bundle import is_bundle, predictor_from_bundle

    model_dir = Path(args.model_dir) if args.model_dir else _dataset_paths(args).results
    # the flags override postprocessing.json's (the bundle's) decision field by field
    overrides = {} if args.lesion_weight is None else {"lesion_weight": args.lesion_weight}
    if args.no_postprocess:
        overrides["keep_largest_kidney_component"] = False
    PostprocessConfig(**overrides)  # a bad value stops here, before any model loads
    memory = MemoryBudget.resolve(args.memory_gb)
    if is_bundle(model_dir):
        predictor = predictor_from_bundle(model_dir, args.engine, args.folds, args.device, args.tta, memory=memory,
                                          precision=args.precision)
    elif args.engine != "torch":
        raise KitssegError(f"{model_dir}: --engine {args.engine} runs a model bundle (-m model.kitsseg.zip, "
                           "written by kits_export), not a model folder")
    else:
        predictor = Predictor.from_model_dir(model_dir, args.folds, args.device, args.tta, memory=memory,
                                             precision=args.precision)
    predictor.postprocess = replace(predictor.postprocess, **overrides)
    failed = predict_inputs(predictor, Path(args.input), Path(args.output), args.overwrite, args.quiet,
                            args.save_probabilities, args.overlays, _arguments(args), args.profile,
                            args.output_format)
    print(f"predictions and summary.csv in {args.output}")
    if failed:
        print(f"error: {failed} case(s) failed (see summary.csv)", file=sys.stderr)
    return 1 if failed else 0


def predict_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_predict", description="Segment kidneys, tumours and cysts with the trained cascade: coarse "
        "VB-Net on the whole scan, fine VB-Net in each kidney VOI, folds ensembled. Writes <case>.nii.gz "
        "(uint8: 0 background, 1 kidney, 2 tumour, 3 cyst; the input's exact geometry) and summary.csv.")
    parser.add_argument("-i", "--input", required=True, metavar="IN",
                        help="an image (.nii.gz .nii .nrrd .mha), a folder of images (a _0000 suffix is "
                             "stripped), a DICOM series folder, or a folder of DICOM series folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("-m", "--model-dir", help="trained models: a model folder, or a model bundle "
                        "(model.kitsseg.zip from kits_export) (default: ROOT/results/NAME)")
    _add_common(parser)
    parser.add_argument("-f", "--folds", nargs="+", help="folds to ensemble: 0-4 and/or all "
                        "(default: every fold trained for both stages)")
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                        help="torch (default), or onnxruntime: the bundle's ONNX networks on the CPU, no PyTorch "
                             "needed (pip install 'kitsseg[deploy]'; -m must be a bundle)")
    parser.add_argument("--output-format", choices=["nifti", "dicom-seg"], default="nifti",
                        help="nifti (default): <case>.nii.gz; dicom-seg: also <case>.seg.dcm, a DICOM "
                             "Segmentation referencing the input series (DICOM series inputs only)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CUDA when available (default)")
    _add_precision(parser)
    parser.add_argument("--tta", action="store_true", help="average over the 8 mirrorings (8x slower)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="keep every connected kidney component (default: one per VOI, the one "
                             "the coarse stage found, or what postprocessing.json decided)")
    _add_lesion_weight(parser, "postprocessing.json's, else ")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>_probabilities.npz (fine-stage probabilities inside each VOI) "
                             "for kits_ensemble")
    parser.add_argument("--overlays", action="store_true", help="also write <case>.png with contour overlays")
    parser.add_argument("--profile", action="store_true",
                        help="print each case's time and peak memory per stage (read, coarse resampling and "
                             "network, VOIs, fine networks, back to the original grid, postprocessing, "
                             "writing) and write them to OUT/profile.json")
    _add_memory_budget(parser, "per case")
    return _run(parser, _predict, argv)


def _export(args: argparse.Namespace) -> int:
    from kitsseg.deploy.export import export_bundle

    paths = _dataset_paths(args)
    model_dir = Path(args.model_dir) if args.model_dir else paths.results
    report = (lambda line: None) if args.quiet else print
    metadata = export_bundle(model_dir, Path(args.output), args.folds, paths.raw, paths.fingerprint, report)
    print(f"model bundle: {args.output} (folds {', '.join(metadata['folds'])})")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_export", description="Write a trained cascade as one model bundle file: per stage and fold "
        "the weights (safetensors), plans and network as ONNX (checked against PyTorch on random inputs), the "
        "postprocessing decision and metadata.json. kits_predict -m BUNDLE runs it, also with "
        "--engine onnxruntime and no PyTorch installed; kits_inspect BUNDLE shows the metadata.")
    parser.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="file to write, e.g. model.kitsseg.zip")
    parser.add_argument("-m", "--model-dir", help="trained models (default: ROOT/results/NAME)")
    parser.add_argument("-f", "--folds", nargs="+", help="folds to include (default: every fold trained for both "
                        "stages)")
    _add_common(parser)
    return _run(parser, _export, argv)


def _inspect(args: argparse.Namespace) -> int:
    from kitsseg.deploy.bundle import describe, open_bundle

    print(describe(open_bundle(Path(args.bundle)).metadata))
    return 0


def inspect_main(argv: list[str] | None = None) -> int:
    parser = _parser(prog="kits_inspect", description="Check a model bundle and print its metadata (labels, "
                     "stages' spacings and patch sizes, normalisation, versions, cross-validation, training data).")
    parser.add_argument("bundle", metavar="BUNDLE", help="a model bundle (model.kitsseg.zip)")
    _add_common(parser, dataset=False)
    return _run(parser, _inspect, argv)


def _evaluate(args: argparse.Namespace) -> int:
    from kitsseg.evaluation import evaluate_folders

    out = Path(args.output or args.pred)
    summary = evaluate_folders(Path(args.ref), Path(args.pred), out, args.metrics, args.quiet)
    for name, value in summary["mean"].items():
        print(f"{name:<22} {value:.4f}" if value is not None else f"{name:<22} n/a")
    print(f"per_case.csv and summary.json in {out}")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_evaluate", description="Score label maps against references with the KiTS19 metrics "
        "(kidney Dice on label > 0, tumour Dice on label 2, their mean) and the KiTS21/23 ones (Dice, surface "
        "Dice as the official scorer computes it, HD95, volume error for kidney {1,2,3}, masses {2,3}, "
        "tumour {2}). Cases match by id.")
    parser.add_argument("-r", "--ref", required=True, help="folder of reference label maps")
    parser.add_argument("-p", "--pred", required=True, help="folder of predicted label maps")
    parser.add_argument("-o", "--output", help="where per_case.csv and summary.json go (default: PRED)")
    parser.add_argument("--metrics", choices=["kits19", "kits23", "all"], default="all",
                        help="kits19: kidney/tumour Dice and composite; kits23: the official KiTS23 scorer's "
                             "columns (caseID, Dice_* and SD_* for kidney/masses/tumor); all (default): "
                             "every region's Dice, surface Dice, HD95 and volume error, and the composite")
    _add_common(parser, dataset=False)
    return _run(parser, _evaluate, argv)


def _crossval(args: argparse.Namespace) -> int:
    from kitsseg.crossval import run_crossval

    decision = run_crossval(_dataset_paths(args), args.folds, args.device, args.quiet)
    print(json.dumps(decision, indent=2))
    return 0


def crossval_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_crossval", description="Predict each fold's validation cases with the full cascade, pool them "
        "in ROOT/results/NAME/crossval, evaluate, and write the postprocessing decision to "
        "ROOT/results/NAME/postprocessing.json (which kits_predict follows).")
    _add_common(parser)
    parser.add_argument("-f", "--folds", nargs="+", choices=["0", "1", "2", "3", "4"],
                        help="folds to use (default: every fold with both stages trained)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return _run(parser, _crossval, argv)


def _ensemble(args: argparse.Namespace) -> int:
    from kitsseg.inference.ensemble import ensemble_folders
    from kitsseg.postprocessing import PostprocessConfig

    config = PostprocessConfig(not args.no_postprocess, args.lesion_weight)
    failed = ensemble_folders([Path(d) for d in args.input], Path(args.output), config, args.quiet)
    print(f"ensembled label maps in {args.output}")
    return 1 if failed else 0


def ensemble_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_ensemble", description="Average the probabilities that several kits_predict "
        "--save-probabilities runs wrote, then decide the classes (lesions weighted) and postprocess.")
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="DIR", help="prediction folders")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--no-postprocess", action="store_true", help="keep every connected kidney component")
    _add_lesion_weight(parser, "", default=True)
    _add_common(parser, dataset=False)
    return _run(parser, _ensemble, argv)


def _overlay(args: argparse.Namespace) -> int:
    import numpy as np

    from kitsseg.io import load_volume
    from kitsseg.visualization import overlay_png

    image, props = load_volume(args.image)
    seg, seg_props = load_volume(args.seg, np.uint8)
    ref = load_volume(args.ref, np.uint8)[0] if args.ref else None
    for name, array in (("segmentation", seg), ("reference", ref)):
        if array is not None and array.shape != image.shape:
            raise KitssegError(f"{args.seg if name == 'segmentation' else args.ref}: {name} shape {array.shape} "
                               f"differs from the image's {image.shape}")
    overlay_png(image, seg, props.spacing_mm, Path(args.output), ref, title=Path(args.seg).name)
    print(f"overlay: {args.output}")
    return 0


def overlay_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_overlay", description="Draw axial and coronal slices through each kidney with label "
        "contours into a PNG: prediction solid (green kidney, red tumour, blue cyst), reference dashed "
        "(yellow, magenta, cyan).")
    parser.add_argument("-i", "--image", required=True, help="the CT")
    parser.add_argument("-s", "--seg", required=True, help="a label map on the CT's grid")
    parser.add_argument("-r", "--ref", help="a reference label map to compare with (optional)")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    _add_common(parser, dataset=False)
    return _run(parser, _overlay, argv)


def _demo(args: argparse.Namespace) -> int:
    from kitsseg.demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=Path(args.workdir), minutes=args.minutes, device=args.device, quiet=args.quiet))
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        prog="kits_demo", description="The whole method end to end on a laptop CPU: phantom data, planning, "
        "preprocessing, training both VB-Nets within a time budget, cascade prediction of held-out cases, "
        "evaluation and overlays. Writes WORKDIR/summary.json.")
    parser.add_argument("--workdir", default="kitsseg_demo", help="where everything goes (default: ./kitsseg_demo)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time for both stages (default: 8)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_common(parser, dataset=False)
    return _run(parser, _demo, argv)


_COMMANDS = {"convert": convert_main, "plan_and_preprocess": plan_and_preprocess_main, "train": train_main,
             "predict": predict_main, "evaluate": evaluate_main, "demo": demo_main, "crossval": crossval_main,
             "ensemble": ensemble_main, "overlay": overlay_main, "export": export_main, "inspect": inspect_main}

if __name__ == "__main__":  # python -m kitsseg.cli COMMAND ... (used by torchrun)
    sys.argv = [f"kits_{sys.argv[1]}", *sys.argv[2:]]
    sys.exit(_COMMANDS[sys.argv[0][5:]](sys.argv[1:]))
