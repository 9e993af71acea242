"""Command-line entry points: argument parsing only; each command calls one library function."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable

from kitsseg.errors import KitssegError
from kitsseg.paths import DEFAULT_DATASET, DatasetPaths, resolve_data_root


def _add_common(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        parser.add_argument("--data-root", metavar="ROOT",
                            help="data root (default: $KITSSEG_DATA, else ./kitsseg_data)")
        parser.add_argument("-d", "--dataset", default=DEFAULT_DATASET, metavar="NAME",
                            help=f"dataset name under ROOT/raw (default: {DEFAULT_DATASET})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")


def _dataset_paths(args: argparse.Namespace) -> DatasetPaths:
    return DatasetPaths(resolve_data_root(args.data_root), args.dataset)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _run(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None],
         argv: list[str] | None) -> int:
    """Parse, run, and turn user errors into one line on stderr and exit code 1."""
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return int(command(args) or 0)
    except KitssegError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _not_implemented(name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        print(f"{name}: not implemented yet", file=sys.stderr)
        return 2
    return command


# kits_convert -----------------------------------------------------------------------------------

def _convert(args: argparse.Namespace) -> int:
    paths = _dataset_paths(args)
    if args.source == "kits":
        from dataset_conversion.kits import convert_kits
        case_ids = convert_kits(Path(args.src), paths.raw, quiet=args.quiet)
    else:
        from dataset_conversion.phantom import PhantomConfig, write_phantom_dataset
        config = PhantomConfig(shape=tuple(args.shape))
        case_ids = write_phantom_dataset(paths.raw, args.num_cases, args.seed, config, quiet=args.quiet)
    print(f"wrote {len(case_ids)} cases to {paths.raw}")
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kits_convert", description="Convert a source dataset into the raw format "
        "ROOT/raw/NAME/{dataset.json, imagesTr, labelsTr}.")
    sub = parser.add_subparsers(dest="source", required=True)
    kits = sub.add_parser("kits", help="official KiTS19/21/23 layout (SRC/case_XXXXX/imaging.nii.gz)")
    kits.add_argument("src", metavar="SRC", help="folder holding case_XXXXX folders (or data/case_XXXXX)")
    _add_common(kits)
    phantom = sub.add_parser("phantom", help="procedural CT phantoms with kidneys, tumours and cysts")
    phantom.add_argument("-n", "--num-cases", type=int, default=20, help="number of cases (default: 20)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    phantom.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"),
                         help="voxels per case, (z, y, x) (default: 64 128 128)")
    _add_common(phantom)
    return _run(parser, _convert, argv)


# commands filled in by later issues -------------------------------------------------------------

def _stub_main(prog: str, description: str, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    _add_common(parser)
    return _run(parser, _not_implemented(prog), argv)


def plan_and_preprocess_main(argv: list[str] | None = None) -> int:
    return _stub_main("kits_plan_and_preprocess", "Fingerprint, plan and preprocess a dataset.", argv)


def train_main(argv: list[str] | None = None) -> int:
    return _stub_main("kits_train", "Train one stage and fold of the VB-Net cascade.", argv)


def predict_main(argv: list[str] | None = None) -> int:
    return _stub_main("kits_predict", "Segment CT images with the trained cascade.", argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    return _stub_main("kits_evaluate", "Score predictions with the KiTS19 and KiTS21/23 metrics.", argv)


def demo_main(argv: list[str] | None = None) -> int:
    return _stub_main("kits_demo", "Run the whole method end to end on phantoms.", argv)
