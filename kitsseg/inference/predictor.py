"""The coarse-to-fine cascade: whole scan at the coarse spacing -> kidney VOIs -> fine spacing per VOI.

Each stage's models are plain callables from a (1, 1, z, y, x) tensor to logits, so the
cascade can be tested with oracles; `Predictor.from_model_dir` loads trained VB-Nets (batch
norms folded into the convolutions). Probabilities return to the original grid only inside
the VOIs; the output is a uint8 label map with the input's exact geometry. Network passes
are one pass or tiles, as memory allows (`kitsseg.memory`); stages are timed for `--profile`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kitsseg import profiling
from kitsseg.boxes import box_shape
from kitsseg.checkpoint import network_from_checkpoint
from kitsseg.errors import KitssegError
from kitsseg.inference.sliding_window import planned_overlap, predict_volume, tile_for
from kitsseg.inference.voi import coarse_mask_in_box, find_vois
from kitsseg.io import CaseProperties, align_to_axes, labels_onto, to_canonical, to_sitk
from kitsseg.memory import (PASS_OVERHEAD_BYTES, MemoryBudget, case_input_bytes, grid_argmax_bytes, network_pass_bytes,
                            network_stage_bytes, network_voxel_bytes, pass_allowance, release_freed_memory, voxels)
from kitsseg.planning import COARSE, FINE, Plans, StagePlan
from kitsseg.postprocessing import PostprocessConfig, postprocess
from kitsseg.preprocessing import normalise
from kitsseg.resampling import resample, shape_at_spacing
from kitsseg.device import resolve_device

PredictFn = Callable[[torch.Tensor], torch.Tensor]
CHECKPOINT = "checkpoint_final.pt"


@dataclass
class CascadeResult:
    labels: np.ndarray  # canonical (z, y, x) uint8 label-file values, postprocessed
    kidneys_found: int
    unprocessed: np.ndarray | None = None
    probabilities: list = field(default_factory=list)  # [(box, (C, *box shape) float16), ...]


def paste(labels: np.ndarray, box, voi_labels: np.ndarray) -> None:
    """Write a VOI's foreground into the map (where VOIs overlap, foreground wins)."""
    labels[box] = np.where(voi_labels > 0, voi_labels, labels[box])


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """Fold each batch norm that follows a convolution into it (eval mode): the same function up to
    float rounding, without the norms' outputs, so a pass is faster and needs less memory."""
    for module in list(network.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)) and isinstance(norm, nn.BatchNorm3d):
                    module[i] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose3d))
                    module[i + 1] = nn.Identity()
    return network


class Predictor:
    """Ensembles the folds of both stages; `predict(sitk_image) -> sitk_image`."""

    def __init__(self, plans: Plans, coarse_models: Sequence[PredictFn], fine_models: Sequence[PredictFn],
                 device: str | torch.device = "cpu", tta: bool = False,
                 postprocess: PostprocessConfig = PostprocessConfig(), memory: MemoryBudget | None = None):
        if not coarse_models or not fine_models:
            raise KitssegError("the cascade needs at least one coarse and one fine model")
        self.plans, self.coarse_models, self.fine_models = plans, list(coarse_models), list(fine_models)
        self.device, self.tta, self.postprocess, self.memory = torch.device(device), tta, postprocess, memory
        self.folds: list[str] = []  # where the models came from (from_model_dir), for kitsseg_run.json
        self.checkpoints: list[Path] = []

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, folds: Sequence[str] | None = None, device: str = "auto",
                       tta: bool = False, postprocess: PostprocessConfig | None = None,
                       memory: MemoryBudget | None = None) -> "Predictor":
        """Load `model_dir/{3d_coarse,3d_fine}/fold_K/checkpoint_final.pt` for the chosen folds
        (default: every fold trained for both stages) and `model_dir/postprocessing.json`."""
        model_dir, torch_device = Path(model_dir), resolve_device(device)
        if folds is None:
            found = [{p.parent.name[5:] for p in (model_dir / s).glob(f"fold_*/{CHECKPOINT}")} for s in (COARSE, FINE)]
            folds = sorted(found[0] & found[1])
            if not folds:
                raise KitssegError(f"{model_dir}: no fold has a {CHECKPOINT} for both {COARSE} and {FINE}")
        models, plans, checkpoints = {COARSE: [], FINE: []}, None, []
        for stage in (COARSE, FINE):
            for fold in folds:
                checkpoints.append(model_dir / stage / f"fold_{fold}" / CHECKPOINT)
                network, fold_plans, _ = network_from_checkpoint(checkpoints[-1], torch_device)
                if plans is not None and fold_plans.intensity != plans.intensity:
                    raise KitssegError(f"{model_dir}: fold {fold} of {stage} was trained with other plans")
                plans = fold_plans
                models[stage].append(fold_batch_norms(network))
        if postprocess is None:
            postprocess = PostprocessConfig.load(model_dir / "postprocessing.json")
        predictor = cls(plans, models[COARSE], models[FINE], torch_device, tta, postprocess, memory)
        predictor.folds, predictor.checkpoints = list(folds), checkpoints
        return predictor

    # ---- stages -------------------------------------------------------------------------------
    def _probabilities(self, models: Sequence[PredictFn], stage: StagePlan, image: np.ndarray,
                       held_bytes: int = 0) -> np.ndarray:
        """Softmax averaged over folds (and mirrorings with TTA), (C, z, y, x); the passes take
        what memory `held_bytes` leave (`_pass_plan`)."""
        flips = [()]
        if self.tta:
            flips = [f for n in range(4) for f in itertools.combinations((2, 3, 4), n)]
        use_amp = self.device.type == "cuda"

        def ensemble(x: torch.Tensor) -> torch.Tensor:
            total = 0
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
                for model in models:
                    for axes in flips:
                        probabilities = torch.softmax(model(torch.flip(x, axes) if axes else x).float(), 1)
                        total = total + (torch.flip(probabilities, axes) if axes else probabilities)
            return total / (len(models) * len(flips))

        tile, _ = self._pass_plan(stage, image.shape, held_bytes)
        release_freed_memory()
        probabilities = predict_volume(ensemble, image, stage.num_classes, stage.network.stride, tile, self.device,
                                       planned_overlap(stage.patch_size))
        release_freed_memory()
        return probabilities

    def _resampled(self, image_hu: np.ndarray, spacing_mm, stage: StagePlan) -> np.ndarray:
        shape = shape_at_spacing(image_hu.shape, spacing_mm, stage.spacing_mm)
        return normalise(resample(image_hu, shape), self.plans.intensity)

    def coarse_mask(self, image_hu: np.ndarray, spacing_mm, held_bytes: int = 0) -> np.ndarray:
        coarse = self.plans.stage(COARSE)
        with profiling.stage("coarse resampling"):
            image = self._resampled(image_hu, spacing_mm, coarse)
        with profiling.stage("coarse network"):
            held_bytes += network_stage_bytes(image_hu.shape, image.shape, coarse.num_classes)
            return self._probabilities(self.coarse_models, coarse, image, held_bytes).argmax(0) > 0

    def fine_probabilities(self, crop_hu: np.ndarray, spacing_mm, held_bytes: int = 0) -> np.ndarray:
        """(C, *fine shape) class probabilities of one VOI at the fine spacing."""
        fine = self.plans.stage(FINE)
        with profiling.stage("VOI extraction and resampling"):
            image = self._resampled(crop_hu, spacing_mm, fine)
        with profiling.stage("fine networks"):
            held_bytes += network_stage_bytes(crop_hu.shape, image.shape, fine.num_classes)
            return self._probabilities(self.fine_models, fine, image, held_bytes)

    @staticmethod
    def labels_on_grid(probabilities: np.ndarray, shape) -> np.ndarray:
        """Argmax of the probabilities resampled to `shape`, one class at a time (lean on memory)."""
        best = np.zeros(shape, np.uint8)
        best_score = resample(probabilities[0], shape)
        for c in range(1, len(probabilities)):
            score = resample(probabilities[c], shape)
            better = score > best_score
            best[better] = c
            np.maximum(best_score, score, out=best_score)
        return best

    # ---- memory: guard and network passes -----------------------------------------------------
    def _pass_plan(self, stage: StagePlan, shape, held_bytes: int) -> tuple[tuple[int, ...] | None, int]:
        """Tile (None: one pass) for a `shape` stage volume while `held_bytes` are allocated, and the
        host bytes of one pass (none on a GPU, whose free memory bounds the passes instead)."""
        on_gpu = self.device.type == "cuda"
        allowance = torch.cuda.mem_get_info(self.device)[0] if on_gpu else pass_allowance(self.memory, held_bytes)
        stride = stage.network.stride
        max_voxels = max(0, allowance - PASS_OVERHEAD_BYTES) // network_voxel_bytes(stage.network)
        tile = tile_for(shape, stage.patch_size, max_voxels, stride)
        seen = tile or [int(np.ceil(n / stride)) * stride for n in shape]
        return tile, 0 if on_gpu else network_pass_bytes(stage.network, seen)

    def _held_bytes(self, shape, image_itemsize: int, keep_unprocessed: bool) -> int:
        return case_input_bytes(shape, image_itemsize, 1, *([1] if keep_unprocessed else []))

    def _voi_held_bytes(self, image_hu: np.ndarray, vois, keep_unprocessed: bool, keep_probabilities: bool) -> int:
        """During the fine stage: the image, and what the VOIs write of the label maps (allocated
        zero-filled, so untouched pages take no memory) and of the kept probabilities."""
        per_voxel = 1 + keep_unprocessed + (2 * self.plans.stage(FINE).num_classes if keep_probabilities else 0)
        return image_hu.nbytes + per_voxel * sum(voxels(box_shape(box)) for box in vois)

    def require_memory(self, source: object, shape, spacing_mm, image_itemsize: int,
                       keep_unprocessed: bool = False) -> None:
        """Before reading a case: the case's arrays, the coarse stage and its network pass must fit the budget."""
        if self.memory is None:
            return
        coarse = self.plans.stage(COARSE)
        coarse_shape = shape_at_spacing(shape, spacing_mm, coarse.spacing_mm)
        held = (self._held_bytes(shape, image_itemsize, keep_unprocessed)
                + network_stage_bytes(shape, coarse_shape, coarse.num_classes))
        self.memory.require(source, held + self._pass_plan(coarse, coarse_shape, held)[1], "prediction")

    def _require_voi_memory(self, source: object, spacing_mm, vois, held: int) -> None:
        fine = self.plans.stage(FINE)
        needed = [held]
        for crop in (box_shape(box) for box in vois):
            fine_shape = shape_at_spacing(crop, spacing_mm, fine.spacing_mm)
            before_pass = held + network_stage_bytes(crop, fine_shape, fine.num_classes)
            needed.append(before_pass + max(self._pass_plan(fine, fine_shape, before_pass)[1], grid_argmax_bytes(crop)))
        self.memory.require(source, max(needed), "the fine stage (kidney VOIs)")

    # ---- cascade ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_array(self, image_hu: np.ndarray, spacing_mm: Sequence[float], keep_unprocessed: bool = False,
                      keep_probabilities: bool = False, source: object = "image") -> CascadeResult:
        """Canonical `(z, y, x)` HU array (any dtype) -> canonical uint8 label map.

        `keep_unprocessed` also returns the map before postprocessing; `keep_probabilities`
        the fine probabilities of each VOI (float16, original grid) with its box. With a
        memory budget, VOIs that would exceed it stop before the fine stage (`source` names the input).
        """
        mask = self.coarse_mask(image_hu, spacing_mm, self._held_bytes(image_hu.shape, image_hu.itemsize,
                                                                       keep_unprocessed))
        fine = self.plans.stage(FINE)
        with profiling.stage("VOI extraction and resampling"):
            coarse_spacing = np.asarray(image_hu.shape) * np.asarray(spacing_mm) / np.asarray(mask.shape)
            vois = find_vois(mask, coarse_spacing, image_hu.shape, spacing_mm, fine.voi_margin_mm)
            held = self._voi_held_bytes(image_hu, vois, keep_unprocessed, keep_probabilities)
            if self.memory is not None:
                self._require_voi_memory(source, spacing_mm, vois, held)
        result = CascadeResult(np.zeros(image_hu.shape, np.uint8), len(vois),
                               np.zeros(image_hu.shape, np.uint8) if keep_unprocessed else None, [])
        for box in vois:
            crop_shape = image_hu[box].shape
            probabilities = self.fine_probabilities(image_hu[box], spacing_mm, held)
            with profiling.stage("probabilities back to the original grid"):
                raw = self.labels_on_grid(probabilities, crop_shape)
                if keep_probabilities:
                    back = np.stack([resample(p, crop_shape).astype(np.float16) for p in probabilities])
                    result.probabilities.append((box, back))
            with profiling.stage("postprocessing"):
                support = coarse_mask_in_box(mask, box, image_hu.shape)
                paste(result.labels, box, postprocess(raw, self.postprocess, support))
                if keep_unprocessed:
                    paste(result.unprocessed, box, raw)
        with profiling.stage("postprocessing"):
            release_freed_memory()
            return self._as_label_values(result)

    def _as_label_values(self, result: CascadeResult) -> CascadeResult:
        """Class indices -> the values the dataset's label files use (KiTS: unchanged)."""
        classes = self.plans.classes
        if not classes.is_identity:
            result.labels = classes.to_label_values(result.labels)
            if result.unprocessed is not None:
                result.unprocessed = classes.to_label_values(result.unprocessed)
        return result

    def predict(self, image: sitk.Image) -> sitk.Image:
        """A CT (any orientation) -> label map with exactly its geometry (an oblique CT is predicted
        on the axes, `align_to_axes`, and its labels taken back to its grid)."""
        props = CaseProperties.from_image(image)
        aligned = align_to_axes(image)
        grid = CaseProperties.from_image(aligned)
        labels = self.predict_array(to_canonical(sitk.GetArrayViewFromImage(aligned), grid), grid.spacing_mm).labels
        return to_sitk(labels if aligned is image else labels_onto(labels, grid, props), props)
