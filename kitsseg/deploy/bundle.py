"""Model bundles: one zip file holding a trained cascade, for kits_predict -m model.kitsseg.zip.

Members (nothing in them is code; nothing is unpickled or imported from a bundle)::

    metadata.json                  what kits_inspect prints (labels, stages, normalisation,
                                   versions, cross-validation, training data) and every member's sha256
    postprocessing.json            the postprocessing decision
    STAGE/fold_K/plans.json        the plans the fold was trained with
    STAGE/fold_K/weights.safetensors   its weights (state dict, batch norms unfolded)
    STAGE/fold_K/network.onnx      its network for ONNX Runtime (batch norms folded)

`open_bundle` checks a bundle before use (format version, members present and unaltered,
tensor names and shapes) and raises one line naming the file and the problem. This module
does not import torch: the ONNX Runtime path runs without it.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kitsseg.errors import KitssegError
from kitsseg.planning import COARSE, FINE, Plans

FORMAT = "kitsseg-model-bundle"
FORMAT_VERSION = 1
METADATA, POSTPROCESSING = "metadata.json", "postprocessing.json"
WEIGHTS, PLANS, ONNX = "weights.safetensors", "plans.json", "network.onnx"
SUFFIX = ".kitsseg.zip"
ENGINES = ("torch", "onnxruntime")
REQUIRED_KEYS = ("folds", "tensors", "files", "stages", "label_map")


def member(stage: str, fold: str, name: str) -> str:
    return f"{stage}/fold_{fold}/{name}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_bundle(path: Path) -> bool:
    """A zip file, or a path named like one (so a missing bundle is reported as such)."""
    return path.suffix == ".zip" or (path.is_file() and zipfile.is_zipfile(path))


@dataclass
class Bundle:
    """A checked bundle: its metadata and member bytes (read into memory; a cascade is tens of MB)."""

    path: Path
    metadata: dict
    members: dict[str, bytes]

    @property
    def folds(self) -> list[str]:
        return list(self.metadata["folds"])

    def plans(self, stage: str, fold: str) -> Plans:
        name = member(stage, fold, PLANS)
        return Plans.from_dict(json.loads(self.members[name]), f"{self.path}:{name}")

    def require_folds(self, folds: Sequence[str] | None) -> list[str]:
        folds = self.folds if folds is None else [str(f) for f in folds]
        missing = [f for f in folds if f not in self.folds]
        if missing:
            raise KitssegError(f"{self.path}: no fold {', '.join(missing)} in the bundle (it holds "
                               f"{', '.join(self.folds)})")
        return folds


def open_bundle(path: Path | str) -> Bundle:
    """Read and check a bundle: one line naming the file and the first problem found."""
    path = Path(path)
    if not path.is_file():
        raise KitssegError(f"{path}: model bundle not found")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KitssegError(f"{path}: not a readable model bundle ({exc})") from None
    try:
        metadata = json.loads(members[METADATA])
    except KeyError:
        raise KitssegError(f"{path}: not a model bundle ({METADATA} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KitssegError(f"{path}: {METADATA} is not valid JSON ({exc})") from None
    bundle = Bundle(path, metadata, members)
    check_bundle(bundle)
    return bundle


def check_bundle(bundle: Bundle) -> None:
    """Format version, members present, unaltered and none extra, tensor names and shapes."""
    path, metadata, members = bundle.path, bundle.metadata, bundle.members
    if metadata.get("format") != FORMAT:
        raise KitssegError(f"{path}: not a kitsseg model bundle (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise KitssegError(f"{path}: bundle format {version} was written by a newer kitsseg "
                           f"({metadata.get('kitsseg_version')}); this one ({_kitsseg_version()}) reads format "
                           f"{FORMAT_VERSION}: upgrade kitsseg")
    lacking = [key for key in REQUIRED_KEYS if key not in metadata]
    if lacking:
        raise KitssegError(f"{path}: {METADATA} lacks {', '.join(lacking)}")
    listed = metadata["files"]
    missing = sorted(set(listed) - set(members))
    extra = sorted(set(members) - set(listed) - {METADATA})
    if missing or extra:
        what = [f"missing {', '.join(missing)}"] if missing else []
        raise KitssegError(f"{path}: bundle members differ from its metadata ("
                           + "; ".join(what + ([f"not listed {', '.join(extra)}"] if extra else [])) + ")")
    for name, entry in listed.items():
        if sha256(members[name]) != entry.get("sha256"):
            raise KitssegError(f"{path}: {name} is altered or corrupt (sha256 differs from metadata.json)")
    for stage in (COARSE, FINE):
        for fold in bundle.folds:
            for name in (WEIGHTS, PLANS, ONNX):
                if member(stage, fold, name) not in members:
                    raise KitssegError(f"{path}: {member(stage, fold, name)} is missing")
            check_tensors(bundle, stage, fold)


def tensor_shapes(data: bytes) -> dict[str, list[int]]:
    """{name: shape} of the tensors in a safetensors file's bytes (read as numpy: no torch)."""
    from safetensors.numpy import load

    return {name: list(array.shape) for name, array in load(data).items()}


def shape_differences(found: dict[str, list[int]], expected: dict[str, list[int]]) -> str | None:
    """What differs between two {tensor name: shape} maps, in a few words, or None.

    >>> shape_differences({"a": [2], "b": [3]}, {"a": [2], "c": [1]})
    'missing tensors c; extra tensors b'
    >>> shape_differences({"a": [3]}, {"a": [2]})
    'a has shape [3], expected [2]'
    """
    problems = []
    if missing := sorted(set(expected) - set(found)):
        problems.append(f"missing tensors {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if extra := sorted(set(found) - set(expected)):
        problems.append(f"extra tensors {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
    problems += [f"{n} has shape {found[n]}, expected {expected[n]}" for n in sorted(set(found) & set(expected))
                 if list(found[n]) != list(expected[n])][:3]
    return "; ".join(problems) or None


def check_tensors(bundle: Bundle, stage: str, fold: str) -> None:
    name = member(stage, fold, WEIGHTS)
    try:
        found = tensor_shapes(bundle.members[name])
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise KitssegError(f"{bundle.path}: {name} is not a valid safetensors file ({exc})") from None
    problem = shape_differences(found, bundle.metadata["tensors"][stage])
    if problem:
        raise KitssegError(f"{bundle.path}: {name}: {problem}")


def _kitsseg_version() -> str:
    from kitsseg import __version__

    return __version__


def write_bundle(path: Path, metadata: dict, members: dict[str, bytes]) -> None:
    """Write the zip atomically; metadata gets each member's sha256 and size."""
    from kitsseg.atomic import atomic_path

    metadata = {**metadata, "files": {name: {"sha256": sha256(data), "bytes": len(data)}
                                      for name, data in sorted(members.items())}}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA, json.dumps(metadata, indent=2))
            for name, data in sorted(members.items()):
                archive.writestr(name, data)


def describe(metadata: dict) -> str:
    """The metadata as kits_inspect prints it: a short summary, then the JSON (without file hashes)."""
    stages = metadata["stages"]
    lines = [f"kitsseg model bundle (format {metadata['format_version']}), written by kitsseg "
             f"{metadata['kitsseg_version']} with torch {metadata.get('torch_version')} on {metadata.get('created')}",
             f"dataset {metadata['dataset_name']}, folds {', '.join(metadata['folds'])}, labels "
             + ", ".join(f"{v} {k}" for k, v in metadata["label_map"].items())]
    for name, stage in stages.items():
        lines.append(f"{name}: spacing {stage['spacing_mm']} mm, patch {stage['patch_size']}, "
                     f"{stage['num_classes']} classes, {stage['parameters']:,} parameters, ONNX opset "
                     f"{stage['onnx_opset']}, largest ONNX-PyTorch logit difference "
                     f"{max(stage['onnx_logit_difference'].values()):.2g}")
    shown = {k: v for k, v in metadata.items() if k != "files"}
    return "\n".join(lines) + "\n" + json.dumps(shown, indent=2)


def predictor_from_bundle(path: Path | str, engine: str = "torch", folds: Sequence[str] | None = None,
                          device: str = "auto", tta: bool = False, postprocess=None, memory=None,
                          precision: str = "auto"):
    """A `Predictor` running the bundle's folds with PyTorch (`precision`: `kitsseg.device.autocast_dtype`)
    or ONNX Runtime (which needs no torch; float32)."""
    from kitsseg.inference.predictor import Predictor
    from kitsseg.postprocessing import PostprocessConfig

    if engine not in ENGINES:
        raise KitssegError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    bundle = open_bundle(path)
    folds = bundle.require_folds(folds)
    plans = bundle.plans(COARSE, folds[0])
    for stage in (COARSE, FINE):
        for fold in folds:
            other = bundle.plans(stage, fold)
            if (other.intensity, other.classes) != (plans.intensity, plans.classes):
                raise KitssegError(f"{path}: fold {fold} of {stage} was trained with other plans (intensity or "
                                   "classes differ)")
    if engine == "onnxruntime":
        from kitsseg.deploy.onnx_engine import OnnxEngine

        runner = OnnxEngine()
        models = {stage: [runner.session(bundle.members[member(stage, f, ONNX)], f"{path}:{member(stage, f, ONNX)}")
                          for f in folds] for stage in (COARSE, FINE)}
    else:
        try:
            from kitsseg.device import resolve_device
            from kitsseg.inference.torch_engine import TorchEngine, network_from_weights
        except ImportError:
            raise KitssegError("--engine torch needs PyTorch (pip install 'kitsseg[torch]' or torch); without "
                               "it, run the bundle with --engine onnxruntime") from None

        runner = TorchEngine(resolve_device(device), precision)
        models = {stage: [network_from_weights(bundle.members[member(stage, f, WEIGHTS)], bundle.plans(stage, f),
                                               stage, runner.device, f"{path}:{member(stage, f, WEIGHTS)}")
                          for f in folds] for stage in (COARSE, FINE)}
    if postprocess is None:
        try:
            postprocess = PostprocessConfig(**json.loads(bundle.members[POSTPROCESSING]))
        except (TypeError, ValueError) as exc:
            raise KitssegError(f"{path}: {POSTPROCESSING} is invalid ({exc})") from None
    predictor = Predictor(plans, models[COARSE], models[FINE], tta=tta, postprocess=postprocess, memory=memory,
                          engine=runner)
    predictor.folds, predictor.checkpoints = folds, [Path(path)]
    return predictor
