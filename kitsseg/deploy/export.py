"""kits_export: a trained model folder -> one model bundle (`kitsseg.deploy.bundle`), needs torch.

Per stage and fold the checkpoint's weights go in as safetensors with its plans, and the
network as ONNX, verified against PyTorch on random inputs (the largest logit difference is
recorded and printed). metadata.json describes the model for kits_inspect.
"""
from __future__ import annotations

import datetime
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save

from kitsseg import __version__
from kitsseg.checkpoint import network_from_checkpoint
from kitsseg.deploy.bundle import FORMAT, FORMAT_VERSION, ONNX, PLANS, POSTPROCESSING, WEIGHTS, member, write_bundle
from kitsseg.deploy.onnx_export import OPSET, export_verified
from kitsseg.inference.torch_engine import CHECKPOINT, fold_batch_norms, trained_folds
from kitsseg.planning import COARSE, FINE, Plans
from kitsseg.postprocessing import PostprocessConfig

DATASET_FIELDS = ("name", "description", "reference", "licence", "license", "release", "numTraining", "labels",
                  "channel_names", "file_ending")


def training_data(raw_dir: Path | None, fingerprint: Path | None) -> dict:
    """What the model was trained on: dataset.json's descriptive fields and the fingerprint's spacings."""
    described = {}
    if raw_dir is not None and (raw_dir / "dataset.json").is_file():
        dataset = json.loads((raw_dir / "dataset.json").read_text())
        described = {k: dataset[k] for k in DATASET_FIELDS if k in dataset}
    if fingerprint is not None and fingerprint.is_file():
        data = json.loads(fingerprint.read_text())
        described.update({k: data[k] for k in ("median_spacing_mm", "median_shape") if k in data})
    return described


def crossval_summary(model_dir: Path) -> dict | None:
    """The mean metrics kits_crossval wrote (unprocessed and postprocessed), when it ran."""
    found = {}
    for variant in ("unprocessed", "postprocessed"):
        path = model_dir / "crossval" / variant / "summary.json"
        if path.is_file():
            found[variant] = json.loads(path.read_text()).get("mean")
    return found or None


def export_bundle(model_dir: Path, out: Path, folds: Sequence[str] | None = None, raw_dir: Path | None = None,
                  fingerprint: Path | None = None, report=print) -> dict:
    """Write the bundle of `model_dir`'s folds (default: every fold trained for both stages) to `out`;
    return its metadata. `report` gets one line per exported network (its logit difference)."""
    model_dir = Path(model_dir)
    folds = trained_folds(model_dir) if folds is None else [str(f) for f in folds]
    members, stages, manifest, plans = {}, {}, {}, None
    for stage in (COARSE, FINE):
        differences, tensors = {}, None
        for fold in folds:
            checkpoint = model_dir / stage / f"fold_{fold}" / CHECKPOINT
            network, plans, stage_plan = network_from_checkpoint(checkpoint, "cpu")
            state = {k: v.contiguous() for k, v in network.state_dict().items()}
            tensors = {k: list(v.shape) for k, v in state.items()}
            members[member(stage, fold, WEIGHTS)] = save(state, metadata={"stage": stage, "fold": fold})
            members[member(stage, fold, PLANS)] = json.dumps(plans.to_dict(), indent=2).encode()
            onnx, differences[fold] = export_verified(fold_batch_norms(network), stage_plan, str(checkpoint))
            members[member(stage, fold, ONNX)] = onnx
            report(f"{stage} fold {fold}: ONNX opset {OPSET}, largest logit difference to PyTorch "
                   f"{differences[fold]:.3g}")
        stages[stage], manifest[stage] = stage_summary(plans, stage, tensors, differences), tensors
    postprocess = PostprocessConfig.load(model_dir / "postprocessing.json")
    members[POSTPROCESSING] = json.dumps(postprocess.to_dict()).encode()
    metadata = bundle_metadata(plans, folds, stages, manifest, postprocess, model_dir, raw_dir, fingerprint)
    write_bundle(Path(out), metadata, members)
    return metadata


def stage_summary(plans: Plans, stage: str, tensors: dict, differences: dict) -> dict:
    plan = plans.stage(stage)
    return {"spacing_mm": list(plan.spacing_mm), "patch_size": list(plan.patch_size),
            "num_classes": plan.num_classes, "class_names": list(plan.class_names),
            "network": asdict(plan.network),
            "parameters": sum(math.prod(shape) for name, shape in tensors.items()
                              if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))),
            "onnx_opset": OPSET, "onnx_logit_difference": differences}


def bundle_metadata(plans: Plans, folds, stages: dict, tensors: dict, postprocess: PostprocessConfig, model_dir: Path,
                    raw_dir: Path | None, fingerprint: Path | None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kitsseg_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dataset_name": plans.dataset_name, "label_map": dict(zip(plans.classes.names, plans.classes.label_values)),
            "dataset_labels": plans.labels, "folds": list(folds),
            "stages": stages, "tensors": tensors, "intensity_normalisation": asdict(plans.intensity),
            "postprocessing": postprocess.to_dict(), "crossval_summary": crossval_summary(model_dir),
            "training_data": training_data(raw_dir, fingerprint)}
