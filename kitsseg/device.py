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


PRECISIONS = ("auto", "float32")


def native_cpu_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AMX or AVX512-BF16, oneDNN kernels)."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported",
                                                                        "_is_avx512_bf16_supported"))


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype of network passes on `device` with `precision` "auto": float16 on
    CUDA; bfloat16 on a CPU that runs it natively (VB-Net passes 2-4x faster than float32 there);
    None (float32) elsewhere or with "float32"."""
    if precision not in PRECISIONS:
        raise KitssegError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and native_cpu_bfloat16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run's precision is recorded: 'float32', or 'mixed float16' / 'mixed bfloat16'."""
    return "float32" if dtype is None else f"mixed {str(dtype).removeprefix('torch.')}"
