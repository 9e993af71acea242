"""The coarse-to-fine cascade: whole scan at the coarse spacing -> kidney VOIs -> fine spacing per VOI.

Each stage's models are plain callables from a (1, 1, z, y, x) tensor to logits, so the
cascade can be tested with oracles; `Predictor.from_model_dir` loads trained VB-Nets.
Probabilities return to the original grid only inside the VOIs; the output is a uint8
label map with the input's exact geometry.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from kitsseg.boxes import box_shape
from kitsseg.checkpoint import network_from_checkpoint
from kitsseg.errors import KitssegError
from kitsseg.inference.sliding_window import predict_volume, tile_for
from kitsseg.inference.voi import coarse_mask_in_box, find_vois
from kitsseg.io import CaseProperties, to_canonical, to_sitk
from kitsseg.memory import MemoryBudget, case_input_bytes, grid_argmax_bytes, network_stage_bytes, voxels
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
                models[stage].append(network)
        if postprocess is None:
            postprocess = PostprocessConfig.load(model_dir / "postprocessing.json")
        predictor = cls(plans, models[COARSE], models[FINE], torch_device, tta, postprocess, memory)
        predictor.folds, predictor.checkpoints = list(folds), checkpoints
        return predictor

    # ---- stages -------------------------------------------------------------------------------
    def _probabilities(self, models: Sequence[PredictFn], stage: StagePlan, image: np.ndarray) -> np.ndarray:
        """Softmax averaged over folds (and mirrorings with TTA), (C, z, y, x)."""
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

        tile = tile_for(image.shape, stage.patch_size)
        return predict_volume(ensemble, image, stage.num_classes, stage.network.stride, tile, self.device)

    def _resampled(self, image_hu: np.ndarray, spacing_mm, stage: StagePlan) -> np.ndarray:
        shape = shape_at_spacing(image_hu.shape, spacing_mm, stage.spacing_mm)
        return normalise(resample(image_hu, shape), self.plans.intensity)

    def coarse_mask(self, image_hu: np.ndarray, spacing_mm) -> np.ndarray:
        coarse = self.plans.stage(COARSE)
        probabilities = self._probabilities(self.coarse_models, coarse, self._resampled(image_hu, spacing_mm, coarse))
        return probabilities.argmax(0) > 0

    def fine_probabilities(self, crop_hu: np.ndarray, spacing_mm) -> np.ndarray:
        """(C, *fine shape) class probabilities of one VOI at the fine spacing."""
        fine = self.plans.stage(FINE)
        return self._probabilities(self.fine_models, fine, self._resampled(crop_hu, spacing_mm, fine))

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

    # ---- memory guard -------------------------------------------------------------------------
    def _held_bytes(self, shape, image_itemsize: int, keep_unprocessed: bool) -> int:
        return case_input_bytes(shape, image_itemsize, 1, *([1] if keep_unprocessed else []))

    def require_memory(self, source: object, shape, spacing_mm, image_itemsize: int,
                       keep_unprocessed: bool = False) -> None:
        """Before reading a case: the case's arrays and the coarse stage must fit the budget."""
        if self.memory is None:
            return
        coarse = self.plans.stage(COARSE)
        coarse_shape = shape_at_spacing(shape, spacing_mm, coarse.spacing_mm)
        self.memory.require(source, self._held_bytes(shape, image_itemsize, keep_unprocessed)
                            + network_stage_bytes(shape, coarse_shape, coarse.num_classes), "prediction")

    def _require_voi_memory(self, source: object, image_hu: np.ndarray, spacing_mm, vois,
                            keep_unprocessed: bool, keep_probabilities: bool) -> None:
        fine = self.plans.stage(FINE)
        crops = [box_shape(box) for box in vois]
        held = self._held_bytes(image_hu.shape, image_hu.itemsize, keep_unprocessed)
        if keep_probabilities:
            held += sum(voxels(c) * 2 * fine.num_classes for c in crops)
        per_voi = [network_stage_bytes(c, shape_at_spacing(c, spacing_mm, fine.spacing_mm), fine.num_classes)
                   + grid_argmax_bytes(c) for c in crops]
        self.memory.require(source, held + max(per_voi, default=0), "the fine stage (kidney VOIs)")

    # ---- cascade ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_array(self, image_hu: np.ndarray, spacing_mm: Sequence[float], keep_unprocessed: bool = False,
                      keep_probabilities: bool = False, source: object = "image") -> CascadeResult:
        """Canonical `(z, y, x)` HU array (any dtype) -> canonical uint8 label map.

        `keep_unprocessed` also returns the map before postprocessing; `keep_probabilities`
        the fine probabilities of each VOI (float16, original grid) with its box. With a
        memory budget, VOIs that would exceed it stop before the fine stage (`source` names the input).
        """
        mask = self.coarse_mask(image_hu, spacing_mm)
        fine = self.plans.stage(FINE)
        coarse_spacing = np.asarray(image_hu.shape) * np.asarray(spacing_mm) / np.asarray(mask.shape)
        vois = find_vois(mask, coarse_spacing, image_hu.shape, spacing_mm, fine.voi_margin_mm)
        if self.memory is not None:
            self._require_voi_memory(source, image_hu, spacing_mm, vois, keep_unprocessed, keep_probabilities)
        result = CascadeResult(np.zeros(image_hu.shape, np.uint8), len(vois),
                               np.zeros(image_hu.shape, np.uint8) if keep_unprocessed else None, [])
        for box in vois:
            crop_shape = image_hu[box].shape
            probabilities = self.fine_probabilities(image_hu[box], spacing_mm)
            raw = self.labels_on_grid(probabilities, crop_shape)
            paste(result.labels, box, postprocess(raw, self.postprocess, coarse_mask_in_box(mask, box, image_hu.shape)))
            if keep_unprocessed:
                paste(result.unprocessed, box, raw)
            if keep_probabilities:
                back = np.stack([resample(p, crop_shape).astype(np.float16) for p in probabilities])
                result.probabilities.append((box, back))
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
        """A CT (any orientation) -> label map with exactly its geometry."""
        props = CaseProperties.from_image(image)
        image_hu = to_canonical(sitk.GetArrayViewFromImage(image), props)
        return to_sitk(self.predict_array(image_hu, props.spacing_mm).labels, props)
