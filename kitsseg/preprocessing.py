"""Preprocessing: resample and normalise each case for both stages, cache as .npz + .json sidecar.

Layered as in nnU-Net: `preprocess_coarse` / `preprocess_fine` are pure (arrays in,
arrays out), `preprocess_case` adds reading and writing, `preprocess_dataset` runs
cases in parallel and skips those already up to date.

Coarse: the whole scan at the coarse spacing, label 1 = kidney region -> `3d_coarse/<case>.npz`.
Fine: each kidney's box plus `context_mm` of real image (half a fine patch, clipped to the scan) at the
fine spacing -> `3d_fine/<case>_voi<k>.npz`; the sidecar's `voi` is the kidney's box plus `voi_margin_mm`
in that array's voxels (where crops are centred), so crops around the kidney hold real anatomy.
Arrays: `image` float16 `(z, y, x)` normalised, `label` uint8 class indices (`plans.classes`:
the label-file values mapped to 0 background, 1 organ, 2... lesions; KiTS keeps its values).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from kitsseg.atomic import atomic_path, remove_leftovers, write_json
from kitsseg.boxes import Box, box_from_list, box_in_resampled, box_shape, box_to_list, grow_box
from kitsseg.dataset import DatasetInfo, RawCase, load_case
from kitsseg.io import read_header
from kitsseg.kidneys import kidney_boxes
from kitsseg.memory import MemoryBudget, case_input_bytes, stage_bytes
from kitsseg.parallel import map_cases
from kitsseg.planning import COARSE, FINE, IntensityConfig, Plans, StagePlan
from kitsseg.paths import DatasetPaths
from kitsseg.resampling import resample, resample_labels, shape_at_spacing


@dataclass(frozen=True)
class StageArrays:
    """One preprocessed array pair, where it came from in the canonical original volume (`box`), and
    (fine stage) the kidney's VOI inside it, in the array's own voxels."""

    image: np.ndarray
    label: np.ndarray
    box: Box
    spacing_mm: tuple[float, float, float]
    voi: Box | None = None


@dataclass(frozen=True)
class FineRegion:
    """One kidney in the fine cache, in the original voxels: `cached` (the kidney's box grown by the
    stage's context, clipped to the scan) is stored; `voi` (grown by the VOI margin) is where the
    kidney's crops are centred and what inference cuts around a found kidney."""

    cached: Box
    voi: Box


def normalise(image_hu: np.ndarray, intensity: IntensityConfig) -> np.ndarray:
    """Round resampled HU to whole HU (what CT stores; the float16 cache then compresses 1.4x better), clip
    to the window, then scale to [-1, 1] ('window') or z-score ('percentile'), in place. Training
    caches and inference both normalise here, so the networks see the same values in both.

    >>> normalise(np.array([-300.0, 149.6, 500.0]), IntensityConfig()).tolist()
    [-1.0, 0.0, 1.0]
    """
    np.rint(image_hu, out=image_hu)
    low, high = intensity.window_hu
    np.clip(image_hu, low, high, out=image_hu)
    if intensity.scheme == "window":
        image_hu -= (low + high) / 2
        image_hu *= 2.0 / (high - low)
    else:
        image_hu -= intensity.mean
        image_hu /= intensity.std
    return image_hu


def _resample_box(image, label, box: Box, spacing_mm, stage: StagePlan, intensity: IntensityConfig,
                  label_values: Sequence[int], voi: Box | None = None) -> StageArrays:
    """`box` of the scan at the stage's spacing; `voi` (a box inside it) mapped to the result's voxels."""
    crop_image, crop_label = image[box], label[box]
    shape = shape_at_spacing(crop_image.shape, spacing_mm, stage.spacing_mm)
    effective = tuple(float(n * s / m) for n, s, m in zip(crop_image.shape, spacing_mm, shape))
    resampled_hu = resample(crop_image, shape)
    return StageArrays(normalise(resampled_hu, intensity), resample_labels(crop_label, shape, label_values),
                       box, effective, None if voi is None else box_in_resampled(voi, box, shape))


COARSE_LABEL_VALUES = (0, 1)  # the coarse stage learns one class: the kidney region (label > 0)


def preprocess_coarse(image, label, spacing_mm, stage: StagePlan, intensity: IntensityConfig) -> StageArrays:
    """The whole scan at the coarse spacing; the label is the kidney region (label > 0), resampled as
    one mask, so a coarse voxel that is mostly kidney + lesions is foreground even when no single
    class covers most of it."""
    whole = tuple(slice(0, n) for n in image.shape)
    return _resample_box(image, label > 0, whole, spacing_mm, stage, intensity, COARSE_LABEL_VALUES)


def fine_boxes(label: np.ndarray, spacing_mm, stage: StagePlan) -> list[FineRegion]:
    """Each kidney's box grown by the stage's context (cached) and by its VOI margin (the VOI)."""
    return [FineRegion(grow_box(box, stage.context_mm, spacing_mm, label.shape),
                       grow_box(box, stage.voi_margin_mm, spacing_mm, label.shape))
            for box in kidney_boxes(label > 0, spacing_mm)]


def preprocess_fine(image, label, spacing_mm, stage: StagePlan, intensity: IntensityConfig,
                    label_values: Sequence[int], regions: Sequence[FineRegion] | None = None) -> list[StageArrays]:
    """Each kidney's region (`fine_boxes` unless given) at the fine spacing (never the whole scan)."""
    if regions is None:
        regions = fine_boxes(label, spacing_mm, stage)
    return [_resample_box(image, label, r.cached, spacing_mm, stage, intensity, label_values, r.voi)
            for r in regions]


def _fine_bytes(regions: Sequence[FineRegion], spacing_mm, stage: StagePlan) -> int:
    shapes = [box_shape(r.cached) for r in regions]
    return sum(stage_bytes(s, shape_at_spacing(s, spacing_mm, stage.spacing_mm)) for s in shapes)


def _save_npz(arrays: StageArrays, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, image=arrays.image.astype(np.float16), label=arrays.label)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float16, label uint8) of one preprocessed file; never unpickles."""
    with np.load(path, allow_pickle=False) as data:
        return data["image"], data["label"]


def _entry(arrays: StageArrays, file: str, label_values) -> dict:
    """Sidecar entry; `voxels_per_label` counts the VOI's voxels (the whole array without one)."""
    counted = arrays.label if arrays.voi is None else arrays.label[arrays.voi]
    counts = np.bincount(counted.ravel(), minlength=max(label_values) + 1)
    entry = {"file": file, "box": box_to_list(arrays.box), "spacing_mm": list(arrays.spacing_mm),
             "shape": list(arrays.label.shape)}
    if arrays.voi is not None:
        entry["voi"] = box_to_list(arrays.voi)
    return {**entry, "voxels_per_label": {str(v): int(counts[v]) for v in label_values}}


def sidecar_path(stage_dir: Path, case_id: str) -> Path:
    return stage_dir / f"{case_id}.json"


def is_up_to_date(stage_dir: Path, case_id: str, plans_hash: str) -> bool:
    """True when the sidecar (written last) matches the plans and all its arrays exist."""
    try:
        sidecar = json.loads(sidecar_path(stage_dir, case_id).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (sidecar.get("plans_hash") == plans_hash
            and all((stage_dir / a["file"]).exists() for a in sidecar.get("arrays", [])))


def read_sidecar(stage_dir: Path, case_id: str) -> dict:
    data = json.loads(sidecar_path(stage_dir, case_id).read_text())
    for entry in data["arrays"]:
        entry["box"] = box_from_list(entry["box"])
        if "voi" in entry:
            entry["voi"] = box_from_list(entry["voi"])
    return data


def _write_stage(stage_dir: Path, case_id: str, plans_hash: str, props, results: list[StageArrays],
                 names: list[str], label_values) -> None:
    sidecar = sidecar_path(stage_dir, case_id)
    sidecar.unlink(missing_ok=True)  # invalid until every array is written
    for stale in stage_dir.glob(f"{case_id}_voi*.npz"):
        stale.unlink()
    for arrays, name in zip(results, names):
        _save_npz(arrays, stage_dir / name)
    write_json({"case_id": case_id, "plans_hash": plans_hash, "properties": props.to_dict(),
                "arrays": [_entry(a, n, label_values) for a, n in zip(results, names)]}, sidecar)


def preprocess_case(case: RawCase, info: DatasetInfo, plans: Plans, out_dir: Path, overwrite: bool = False,
                    memory: MemoryBudget | None = None) -> dict[str, int]:
    """Read one case, write whichever stages are not up to date; return arrays written per stage.

    With a `memory` budget, a case whose arrays would exceed it stops before they are made.
    """
    todo = [s for s in (COARSE, FINE)
            if overwrite or not is_up_to_date(out_dir / s, case.case_id, plans.stage_hash(s))]
    if not todo:
        return {}
    if memory is not None:
        props, image_bytes = read_header(case.image)
        held = case_input_bytes(props.shape, image_bytes, read_header(case.label)[1], 1)
        coarse_shape = shape_at_spacing(props.shape, props.spacing_mm, plans.stage(COARSE).spacing_mm)
        memory.require(case.image, held + stage_bytes(props.shape, coarse_shape), "preprocessing")
    image, label, props = load_case(case, info)
    if not plans.classes.is_identity:
        label = plans.classes.to_class_indices(label)
    label_values = list(range(len(plans.classes.names)))
    written = {}
    for name in todo:
        stage = plans.stage(name)
        if name == COARSE:
            results = [preprocess_coarse(image, label, props.spacing_mm, stage, plans.intensity)]
            names, values = [f"{case.case_id}.npz"], COARSE_LABEL_VALUES
        else:
            regions = fine_boxes(label, props.spacing_mm, stage)
            if memory is not None:
                memory.require(case.image, held + _fine_bytes(regions, props.spacing_mm, stage),
                               "the fine stage (kidney regions at its spacing)")
            results = preprocess_fine(image, label, props.spacing_mm, stage, plans.intensity, label_values,
                                      regions)
            names, values = [f"{case.case_id}_voi{k}.npz" for k in range(len(results))], label_values
            if not results:
                warnings.warn(f"case {case.case_id}: no foreground, skipped for the fine stage")
        _write_stage(out_dir / name, case.case_id, plans.stage_hash(name), props, results, names, values)
        written[name] = len(results)
    return written


def preprocess_dataset(paths: DatasetPaths, plans: Plans, info: DatasetInfo, cases: list[RawCase],
                       num_workers: int = 1, overwrite: bool = False, quiet: bool = False,
                       memory_gb: float | None = None) -> list[str]:
    """Preprocess every case (in parallel); return the ids of cases that failed.

    `memory_gb` (default: `MemoryBudget.resolve`'s) is shared by the workers.
    """
    memory = MemoryBudget.resolve(memory_gb, num_workers)
    for stage in (COARSE, FINE):
        paths.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        remove_leftovers(paths.stage_dir(stage))
    done = map_cases(partial(preprocess_case, info=info, plans=plans, out_dir=paths.preprocessed,
                             overwrite=overwrite, memory=memory), cases, num_workers, desc="preprocess",
                     quiet=quiet)
    return [c.case_id for c in cases if c.case_id not in done]
