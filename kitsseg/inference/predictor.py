"""The coarse-to-fine cascade: whole scan at the coarse spacing -> kidney VOIs -> fine spacing per VOI.

Each stage's models are callables that the engine runs (`kitsseg.inference.engine`): by default
the PyTorch engine, callables from a (1, 1, z, y, x) tensor to logits, so the cascade can be
tested with oracles; `Predictor.from_model_dir` loads trained VB-Nets (batch norms folded into
the convolutions), `kitsseg.deploy.bundle` a model bundle for PyTorch or ONNX Runtime. This
module does not import torch (the ONNX Runtime path runs without it). Probabilities return to
the original grid only inside the VOIs; the output is a uint8 label map with the input's exact geometry. Network passes
are one pass or tiles, as memory allows (`kitsseg.memory`; on a GPU its free memory, so a VOI
that fits is one pass); stages are timed for `--profile`.

When the coarse stage finds no kidney at probability 0.5 it is asked once more at
`LOWERED_COARSE_THRESHOLD`. A VOI keeps its labels only if they hold the plans' `min_voi_kidney_ml`
of kidney tissue, unless no VOI of the scan does: a coarse net's false region beside a kidney holds
next to none, a real kidney side does. Each VOI (`kitsseg.inference.voi`: coarse pieces longer
than any kidney are cut to one) is grown by the fine stage's `inference_context_mm` of real image
on every side, and further up to the network's stride multiple, which a pass would otherwise fill
with padding (clipped to the scan; beyond the scan the passes pad with what air normalises to)
before the fine networks see it, and the probabilities are taken back on the VOI alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from kitsseg import profiling
from kitsseg.boxes import Box, box_shape
from kitsseg.errors import KitssegError
from kitsseg.inference.engine import Engine
from kitsseg.inference.sliding_window import planned_overlap, predict_volume, tile_for
from kitsseg.inference.voi import coarse_mask_in_box, find_vois
from kitsseg.io import CaseProperties, align_to_axes, labels_onto, to_canonical, to_sitk
from kitsseg.kidney_sides import body_midline_x
from kitsseg.memory import (PASS_OVERHEAD_BYTES, MemoryBudget, case_input_bytes, grid_argmax_bytes, network_pass_bytes,
                            network_stage_bytes, network_voxel_bytes, pass_allowance, release_freed_memory, voxels)
from kitsseg.planning import COARSE, FINE, Plans, StagePlan
from kitsseg.postprocessing import KIDNEY_CLASS, PostprocessConfig, class_weight, postprocess
from kitsseg.preprocessing import normalise
from kitsseg.resampling import resample, shape_at_spacing

PredictFn = Callable  # a model as its engine runs it (PyTorch: a (1, 1, z, y, x) tensor to logits)
# the second try when no kidney is found: voxels whose kidney-region probability exceeds this (not 0.5)
LOWERED_COARSE_THRESHOLD = 0.2
# a coarse kidney-region mask larger than this is not kidneys (the largest kidneys + masses of 102 KiTS19
# cases, bench_scale.py's fingerprint: 1.78 L)
MAX_KIDNEY_REGION_ML = 8000.0


@dataclass
class CascadeResult:
    labels: np.ndarray  # canonical (z, y, x) uint8 label-file values, postprocessed
    kidneys_found: int  # VOIs whose labels were kept (at most one per side of the body)
    unprocessed: np.ndarray | None = None
    probabilities: list = field(default_factory=list)  # [(box, (C, *box shape) float16), ...]
    coarse_threshold: float = 0.5  # kidney-region probability that found the VOIs (second try: the lowered one)
    midline_x: float = 0.0  # the body's midline along canonical x, voxel-edge units (kidney_sides.body_midline_x)


def paste(labels: np.ndarray, box, voi_labels: np.ndarray) -> None:
    """Write a VOI's foreground into the map (where VOIs overlap, foreground wins)."""
    labels[box] = np.where(voi_labels > 0, voi_labels, labels[box])


class Predictor:
    """Ensembles the folds of both stages; `predict(sitk_image) -> sitk_image`."""

    def __init__(self, plans: Plans, coarse_models: Sequence[PredictFn], fine_models: Sequence[PredictFn],
                 device="cpu", tta: bool = False, postprocess: PostprocessConfig = PostprocessConfig(),
                 memory: MemoryBudget | None = None, engine: Engine | None = None):
        """`engine` runs the models (default: the PyTorch engine on `device`)."""
        if not coarse_models or not fine_models:
            raise KitssegError("the cascade needs at least one coarse and one fine model")
        if engine is None:
            from kitsseg.inference.torch_engine import TorchEngine
            engine = TorchEngine(device)
        self.plans, self.coarse_models, self.fine_models = plans, list(coarse_models), list(fine_models)
        self.engine, self.tta, self.postprocess, self.memory = engine, tta, postprocess, memory
        self.folds: list[str] = []  # where the models came from (from_model_dir), for kitsseg_run.json
        self.checkpoints: list[Path] = []

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, folds: Sequence[str] | None = None, device: str = "auto",
                       tta: bool = False, postprocess: PostprocessConfig | None = None,
                       memory: MemoryBudget | None = None, precision: str = "auto") -> "Predictor":
        """Load `model_dir/{3d_coarse,3d_fine}/fold_K/checkpoint_final.pt` for the chosen folds
        (default: every fold trained for both stages) and `model_dir/postprocessing.json`; `precision` of
        the passes: `kitsseg.device.autocast_dtype`."""
        from kitsseg.device import resolve_device
        from kitsseg.inference.torch_engine import TorchEngine, load_model_dir, trained_folds

        model_dir, torch_device = Path(model_dir), resolve_device(device)
        folds = trained_folds(model_dir) if folds is None else folds
        plans, models, checkpoints = load_model_dir(model_dir, folds, torch_device)
        if postprocess is None:
            postprocess = PostprocessConfig.load(model_dir / "postprocessing.json")
        predictor = cls(plans, models[COARSE], models[FINE], torch_device, tta, postprocess, memory,
                        TorchEngine(torch_device, precision))
        predictor.folds, predictor.checkpoints = list(folds), checkpoints
        return predictor

    # ---- stages -------------------------------------------------------------------------------
    def _probabilities(self, models: Sequence[PredictFn], stage: StagePlan, image: np.ndarray,
                       held_bytes: int = 0) -> np.ndarray:
        """Softmax averaged over folds (and mirrorings with TTA), (C, z, y, x); the passes take
        what memory `held_bytes` leave (`_pass_plan`)."""
        tile, _ = self._pass_plan(stage, image.shape, held_bytes)
        release_freed_memory()
        probabilities = predict_volume(self.engine.ensemble(models, self.tta), image, stage.num_classes,
                                       stage.network.stride, tile, planned_overlap(stage.patch_size),
                                       self.plans.intensity.padding_value)
        release_freed_memory()
        return probabilities

    def _resampled(self, image_hu: np.ndarray, spacing_mm, stage: StagePlan) -> np.ndarray:
        shape = shape_at_spacing(image_hu.shape, spacing_mm, stage.spacing_mm)
        return normalise(resample(image_hu, shape), self.plans.intensity)

    def coarse_probabilities(self, image_hu: np.ndarray, spacing_mm, held_bytes: int = 0) -> tuple[np.ndarray, float]:
        """(C, *coarse shape) probabilities of the coarse stage, and the body's midline along x
        in coarse voxels (`body_midline_x` of the coarse image in HU)."""
        coarse = self.plans.stage(COARSE)
        with profiling.stage("coarse resampling"):
            image = resample(image_hu, shape_at_spacing(image_hu.shape, spacing_mm, coarse.spacing_mm))
            midline_x = body_midline_x(image)
            normalise(image, self.plans.intensity)
        with profiling.stage("coarse network"):
            held_bytes += network_stage_bytes(image_hu.shape, image.shape, coarse.num_classes)
            probabilities = self._probabilities(self.coarse_models, coarse, image, held_bytes)
        return probabilities, midline_x

    def fine_probabilities(self, crop_hu: np.ndarray, spacing_mm, held_bytes: int = 0) -> np.ndarray:
        """(C, *fine shape) class probabilities of one VOI at the fine spacing."""
        fine = self.plans.stage(FINE)
        with profiling.stage("VOI extraction and resampling"):
            image = self._resampled(crop_hu, spacing_mm, fine)
        with profiling.stage("fine networks"):
            held_bytes += network_stage_bytes(crop_hu.shape, image.shape, fine.num_classes)
            return self._probabilities(self.fine_models, fine, image, held_bytes)

    def labels_on_grid(self, probabilities: np.ndarray, shape, window: Box | None = None) -> np.ndarray:
        """The class decision (`postprocessing.decide_classes`: lesions weighted) on the probabilities
        resampled to `shape` (only its `window`, when given), one class at a time (lean on memory)."""
        best_score = resample(probabilities[0], shape, window)
        best = np.zeros(best_score.shape, np.uint8)
        for c in range(1, len(probabilities)):
            score = resample(probabilities[c], shape, window)
            weight = class_weight(c, self.postprocess)
            if weight != 1.0:  # the default decision is the plain argmax: no pass over the grid
                score *= weight
            better = score > best_score
            best[better] = c
            np.maximum(best_score, score, out=best_score)
        return best

    # ---- memory: guard and network passes -----------------------------------------------------
    def _pass_plan(self, stage: StagePlan, shape, held_bytes: int) -> tuple[tuple[int, ...] | None, int]:
        """Tile (None: one pass) for a `shape` stage volume while `held_bytes` are allocated, and the
        host bytes of one pass (none on a GPU, whose free memory bounds the passes instead)."""
        free_device_bytes = self.engine.free_device_bytes()
        on_gpu = free_device_bytes is not None
        allowance = free_device_bytes if on_gpu else pass_allowance(self.memory, held_bytes)
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
    def _kidney_vois(self, coarse: np.ndarray, midline_x: float, shape,
                     spacing_mm) -> tuple[list[Box], np.ndarray, float]:
        """VOIs of the voxels whose kidney-region probability (1 - background's) exceeds 0.5, else
        `LOWERED_COARSE_THRESHOLD`: (VOIs, the coarse kidney mask, the threshold that found them). A mask
        over `MAX_KIDNEY_REGION_ML` is no kidney (an untrained or misled coarse net marking the body):
        no VOI, rather than fine passes over the whole scan."""
        fine = self.plans.stage(FINE)
        coarse_spacing = np.asarray(shape) * np.asarray(spacing_mm) / np.asarray(coarse.shape[1:])
        voxel_ml = float(np.prod(coarse_spacing)) / 1000.0
        for threshold in (0.5, LOWERED_COARSE_THRESHOLD):
            mask = coarse[0] < 1 - threshold
            if mask.sum() * voxel_ml > MAX_KIDNEY_REGION_ML:
                return [], mask, threshold
            vois = find_vois(mask, coarse_spacing, shape, spacing_mm, fine.voi_margin_mm, midline_x,
                             max_extent_mm=fine.max_kidney_extent_mm)
            if vois:
                break
        return vois, mask, threshold

    def _with_context(self, box: Box, shape, spacing_mm) -> Box:
        """The VOI grown on every side by the fine stage's inference context and then by what the pass
        would otherwise pad to the network's stride (real image at no extra network cost), clipped to
        the scan. In original voxels: the largest extent that the fine spacing still rounds to the
        stride multiple."""
        fine = self.plans.stage(FINE)
        grown = []
        for b, s, f, n in zip(box, spacing_mm, fine.spacing_mm, shape):
            context = int(np.ceil(fine.inference_context_mm / s))
            extent = b.stop - b.start + 2 * context
            fine_voxels = shape_at_spacing((extent,), (s,), (f,))[0]
            target = -(-fine_voxels // fine.network.stride) * fine.network.stride
            largest = int((target + 0.5) * f / s)
            if shape_at_spacing((largest,), (s,), (f,))[0] > target:
                largest -= 1
            grow = context + max(0, (largest - extent) // 2)
            grown.append(slice(max(0, b.start - grow), min(n, b.stop + grow)))
        return tuple(grown)

    def predict_array(self, image_hu: np.ndarray, spacing_mm: Sequence[float], keep_unprocessed: bool = False,
                      keep_probabilities: bool = False, source: object = "image") -> CascadeResult:
        """Canonical `(z, y, x)` HU array (any dtype) -> canonical uint8 label map.

        `keep_unprocessed` also returns the map before postprocessing; `keep_probabilities`
        the fine probabilities of each VOI whose labels were kept (float16, original grid) with its box. With a
        memory budget, VOIs that would exceed it stop before the fine stage (`source` names the input).
        """
        coarse, midline_x = self.coarse_probabilities(
            image_hu, spacing_mm, self._held_bytes(image_hu.shape, image_hu.itemsize, keep_unprocessed))
        with profiling.stage("VOI extraction and resampling"):
            vois, mask, threshold = self._kidney_vois(coarse, midline_x, image_hu.shape, spacing_mm)
            seen = [self._with_context(box, image_hu.shape, spacing_mm) for box in vois]
            held = self._voi_held_bytes(image_hu, vois, keep_unprocessed, keep_probabilities)
            if self.memory is not None:
                self._require_voi_memory(source, spacing_mm, seen, held)
        result = CascadeResult(np.zeros(image_hu.shape, np.uint8), 0,
                               np.zeros(image_hu.shape, np.uint8) if keep_unprocessed else None, [], threshold,
                               midline_x * image_hu.shape[2] / coarse.shape[3])
        voxel_ml, min_kidney_ml = float(np.prod(spacing_mm)) / 1000.0, self.plans.stage(FINE).min_voi_kidney_ml
        found, kidney_ml = [], []  # per VOI: (box, labels, probabilities or None), its kidney tissue
        for box, seen_box in zip(vois, seen):
            seen_shape = box_shape(seen_box)
            window = tuple(slice(b.start - s.start, b.stop - s.start) for b, s in zip(box, seen_box))
            probabilities = self.fine_probabilities(image_hu[seen_box], spacing_mm, held)
            with profiling.stage("probabilities back to the original grid"):
                raw = self.labels_on_grid(probabilities, seen_shape, window)
                back = None if not keep_probabilities else np.stack(
                    [resample(p, seen_shape, window).astype(np.float16) for p in probabilities])
            with profiling.stage("postprocessing"):
                support = coarse_mask_in_box(mask, box, image_hu.shape)
                labels = postprocess(raw, self.postprocess, support)
                if keep_unprocessed:
                    paste(result.unprocessed, box, raw)
            found.append((box, labels, back))
            kidney_ml.append(np.count_nonzero(labels == KIDNEY_CLASS) * voxel_ml)
        with_kidney = [f for f, ml in zip(found, kidney_ml) if ml >= min_kidney_ml]
        for box, labels, back in with_kidney or found:  # a false region beside a kidney holds next to none
            paste(result.labels, box, labels)
            result.kidneys_found += 1
            if keep_probabilities:
                result.probabilities.append((box, back))
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
