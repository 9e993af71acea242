"""Choosing the torch device from a --device flag, and what the visible GPU offers."""
from __future__ import annotations

import torch

from kitsseg.errors import KitssegError


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' = CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise KitssegError("--device cuda: no CUDA device is available")
    return torch.device(name)


def gpu_memory_gb() -> float | None:
    """Total memory of the first visible CUDA device (GB), or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
