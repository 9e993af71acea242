"""kits_plan_and_preprocess: fingerprint -> plans -> preprocessed stages and splits."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

from kitsseg.dataset import check_geometry, list_cases, read_properties
from kitsseg.errors import KitssegError
from kitsseg.fingerprint import Fingerprint, extract_fingerprint, save_fingerprint
from kitsseg.paths import DatasetPaths
from kitsseg.device import gpu_memory_gb as visible_gpu_memory_gb
from kitsseg.planning import (CPU_PRESET, DEFAULT_GPU_MEMORY_GB, DEFAULT_PRESET, load_plans, load_preset,
                              plan_experiment, save_plans)
from kitsseg.preprocessing import preprocess_dataset
from kitsseg.training.splits import load_or_create_splits

STEPS = ("fingerprint", "plan", "preprocess")


def planned_gpu_memory_gb(requested: float | None, preset: Path) -> float:
    """The GPU memory the batch sizes are planned for: the flag, else the visible GPU's, else 8 GB
    (with one line saying so when the GPU preset is planned on a machine without a GPU)."""
    if requested:
        return requested
    visible = visible_gpu_memory_gb()
    if visible is not None:
        return visible
    if Path(preset).resolve() == DEFAULT_PRESET.resolve():
        warnings.warn(f"no GPU visible: planning the GPU preset ({DEFAULT_PRESET.name}, batch sizes for "
                      f"{DEFAULT_GPU_MEMORY_GB:g} GB); to train on this CPU, plan with --preset {CPU_PRESET}")
    return DEFAULT_GPU_MEMORY_GB


def plan_and_preprocess(paths: DatasetPaths, steps: Sequence[str] = STEPS, num_workers: int = 2,
                        preset: Path = DEFAULT_PRESET, normalization: str | None = None,
                        gpu_memory_gb: float | None = None, overwrite: bool = False, quiet: bool = False,
                        memory_gb: float | None = None) -> int:
    """Run the chosen steps; return the number of cases that failed preprocessing."""
    info, cases = list_cases(paths.raw)
    for case in cases:  # header-only geometry check: fail before any long work
        check_geometry(case.case_id, read_properties(case.image), read_properties(case.label))
    if "fingerprint" in steps:
        if overwrite or _stale(paths.fingerprint, [c.case_id for c in cases]):
            save_fingerprint(extract_fingerprint(paths.raw, num_workers, quiet=quiet), paths.fingerprint)
    if "plan" in steps:
        if not paths.fingerprint.exists():
            raise KitssegError(f"{paths.fingerprint}: not found (run --steps fingerprint first)")
        fingerprint = Fingerprint.from_dict(json.loads(paths.fingerprint.read_text()))
        plans = plan_experiment(fingerprint, paths.name, info.labels, load_preset(preset),
                                normalization, planned_gpu_memory_gb(gpu_memory_gb, preset))
        save_plans(plans, paths.plans)
    failed = []
    if "preprocess" in steps:
        plans = load_plans(paths.plans)
        load_or_create_splits(paths.splits, [c.case_id for c in cases])
        failed = preprocess_dataset(paths, plans, info, cases, num_workers, overwrite, quiet, memory_gb)
    return len(failed)


def _stale(fingerprint_path: Path, case_ids: list[str]) -> bool:
    """A fingerprint is redone when missing, unreadable, or made from other cases."""
    try:
        return set(json.loads(fingerprint_path.read_text())["cases"]) != set(case_ids)
    except (OSError, json.JSONDecodeError, KeyError):
        return True
