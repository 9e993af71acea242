"""Memory guard: estimate a case's working memory before allocating it, and stop early when over budget.

The budget (bytes) comes from `--memory-gb`, else the `KITSSEG_MEMORY_GB` variable, else the
memory available when the command starts. A case that would need more stops with one line
naming the file, instead of the system killing the process part-way through.

Estimates are upper bounds of what kitsseg allocates, counted per voxel: the case's own
arrays, and per stage the resampled outputs plus resampling's one intermediate (resampling
is chunked). The fine stage is checked once its boxes are known, still before its arrays exist.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kitsseg.errors import KitssegError

MEMORY_ENV = "KITSSEG_MEMORY_GB"
GB = 1e9
# per output voxel of a resampled stage array: float32 image + uint8 label + resample_labels'
# float32 running total, best score and current score
STAGE_BYTES_PER_VOXEL = 4 + 1 + 3 * 4
# per voxel and class of a stage at prediction: float32 summed probabilities, and the returned copy
CLASS_BYTES_PER_VOXEL = 2 * 4
# per voxel of a VOI back on the original grid: per-class argmax (best and current score, best class)
GRID_BYTES_PER_VOXEL = 4 + 4 + 1


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class MemoryBudget:
    """How many bytes one case may use; `require` raises before an allocation that would exceed it."""

    bytes: float

    @classmethod
    def resolve(cls, memory_gb: float | None = None, workers: int = 1) -> "MemoryBudget":
        """The budget of one case when `workers` cases run at once."""
        if memory_gb is None and os.environ.get(MEMORY_ENV):
            try:
                memory_gb = float(os.environ[MEMORY_ENV])
            except ValueError:
                raise KitssegError(f"{MEMORY_ENV}={os.environ[MEMORY_ENV]!r}: not a number of GB") from None
        total = available_bytes() if memory_gb is None else memory_gb * GB
        if total <= 0:
            raise KitssegError(f"memory budget must be positive, not {total / GB:g} GB")
        return cls(total / max(1, workers))

    def require(self, source: object, needed_bytes: float, what: str) -> None:
        if needed_bytes > self.bytes:
            raise KitssegError(f"{source}: {what} needs about {needed_bytes / GB:.1f} GB, over the memory budget "
                               f"of {self.bytes / GB:.1f} GB per case (check the voxel spacing in the header, "
                               f"or raise the budget with --memory-gb or {MEMORY_ENV})")


def voxels(shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape)


def resample_intermediate_voxels(shape_in: Sequence[int], shape_out: Sequence[int]) -> int:
    """The largest array `resampling.resample` holds besides its output: the output with its
    chunk axis (the slowest in memory, so any of the three) not yet resampled."""
    return max(voxels(shape_out) // max(1, int(shape_out[a])) * int(shape_in[a]) for a in range(3))


def stage_bytes(shape_in: Sequence[int], shape_out: Sequence[int]) -> int:
    """Preprocessing one box: its resampled image and label plus the resampling intermediate."""
    return (voxels(shape_out) * STAGE_BYTES_PER_VOXEL
            + 4 * resample_intermediate_voxels(shape_in, shape_out))


def case_input_bytes(shape: Sequence[int], *itemsizes: int) -> int:
    """The case's own arrays: one per itemsize (image, label or output map) on the original grid."""
    return voxels(shape) * sum(itemsizes)


def network_stage_bytes(shape_in: Sequence[int], shape_out: Sequence[int], num_classes: int) -> int:
    """Predicting one stage: its resampled input, per-class sums and probabilities, the intermediate."""
    return (voxels(shape_out) * (4 + CLASS_BYTES_PER_VOXEL * num_classes)
            + 4 * resample_intermediate_voxels(shape_in, shape_out))


def grid_argmax_bytes(shape: Sequence[int]) -> int:
    """Taking a VOI's per-class argmax back on its original grid."""
    return voxels(shape) * GRID_BYTES_PER_VOXEL
