"""PyTorch DDP under torchrun: set up from the environment torchrun provides, nothing home-made.

Without torchrun's variables (WORLD_SIZE unset or 1) everything is a no-op. On CUDA each rank
takes GPU LOCAL_RANK and the nccl backend; on CPU the gloo backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        use_cuda = device != "cpu" and torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dist.get_rank(), world_size,
                   torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))

    def wrap(self, network: nn.Module) -> nn.Module:
        if not self.enabled:
            return network
        return nn.parallel.DistributedDataParallel(network, device_ids=[self.device.index]
                                                   if self.device.type == "cuda" else None)

    def from_rank_zero(self, value: float) -> float:
        """Rank 0's `value` on every rank (a decision the ranks must share, such as the time budget's
        stop: a rank stopping alone would leave the others waiting in the gradient all-reduce)."""
        if not self.enabled:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return float(shared.item())

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
