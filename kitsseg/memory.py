"""Memory guard: estimate a case's working memory before allocating it, and stop early when over budget.

The budget (bytes) comes from `--memory-gb`, else the `KITSSEG_MEMORY_GB` variable, else the
memory available when the command starts. A case that would need more stops with one line
naming the file, instead of the system killing the process part-way through.

Estimates are upper bounds of what kitsseg allocates, counted per voxel: the case's own
arrays, per stage the resampled outputs plus resampling's one intermediate (resampling
is chunked), and in prediction the network pass. The fine stage is checked once its boxes
are known, still before its arrays exist.

Prediction sizes its network passes (one pass, or tiles) to what is left of the budget,
capped so that the process, runtime included, stays within `PEAK_TARGET_BYTES`.
"""
from __future__ import annotations

import ctypes
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
# per voxel and class of a stage at prediction: float32 summed probabilities (returned, divided in place)
CLASS_BYTES_PER_VOXEL = 4
# per voxel of a stage at prediction: float32 resampled input, its padded copy and the tiles' weight sums
STAGE_INPUT_BYTES_PER_VOXEL = 3 * 4
# per voxel of a VOI back on the original grid: per-class argmax (best and current score, best class)
GRID_BYTES_PER_VOXEL = 4 + 4 + 1
# kits_predict's aim for one case's peak RSS; Python, torch, SimpleITK and two loaded VB-Nets take
# RUNTIME_BYTES of it (measured: 0.40 GB after the imports, 0.44 GB after a first forward pass)
PEAK_TARGET_BYTES = 2 * GB
RUNTIME_BYTES = int(0.45 * GB)
# a network pass's memory besides its per-voxel tensors (oneDNN buffers, allocator slack; measured 70-100 MB)
PASS_OVERHEAD_BYTES = int(0.15 * GB)


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
    """Predicting one stage, besides the network passes: its input, per-class sums, the resampling intermediate."""
    return (voxels(shape_out) * (STAGE_INPUT_BYTES_PER_VOXEL + CLASS_BYTES_PER_VOXEL * num_classes)
            + 4 * resample_intermediate_voxels(shape_in, shape_out))


def grid_argmax_bytes(shape: Sequence[int]) -> int:
    """Taking a VOI's per-class argmax back on its original grid."""
    return voxels(shape) * GRID_BYTES_PER_VOXEL


def network_voxel_bytes(network) -> int:
    """Bytes per input voxel of a no-grad float32 forward of a VB-Net (`NetworkConfig`) whose batch
    norms are folded into its convolutions (as `Predictor.from_model_dir` loads them). At full
    resolution: the input, the stem's skip, four tensors as wide as the last up block (its
    concatenation, a residual unit's two convolutions and their sum) and the logits; each coarser
    level adds its skip. Paper VB-Net: 618 estimated; measured 617-619 per voxel plus 70-100 MB."""
    floats = (1 + network.stem_channels + 4 * network.up_channels[-1] + network.num_classes
              + sum(c / 8 ** (level + 1) for level, c in enumerate(network.down_channels)))
    return math.ceil(4 * floats)


def network_pass_bytes(network, shape: Sequence[int]) -> int:
    """One network pass over a `shape` input (see `network_voxel_bytes`)."""
    return network_voxel_bytes(network) * voxels(shape) + PASS_OVERHEAD_BYTES


def pass_allowance(budget: MemoryBudget | None, held_bytes: int) -> int:
    """Bytes a network pass may take when `held_bytes` are allocated: the budget, capped at what keeps
    the process within `PEAK_TARGET_BYTES`, less what is held (0 when nothing is left)."""
    limit = PEAK_TARGET_BYTES - RUNTIME_BYTES
    if budget is not None:
        limit = min(limit, budget.bytes)
    return max(0, int(limit - held_bytes))


def release_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; nothing elsewhere). A network
    pass's smaller tensors come from the heap, whose freed pages glibc otherwise keeps: 0.25 GB
    after the coarse pass of a 512x512x64 scan, measured, on top of the next pass's own peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
