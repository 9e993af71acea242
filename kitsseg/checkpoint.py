"""Checkpoints: self-contained (weights, plans, stage), saved atomically, loaded without unpickling code.

Inference rebuilds the network from a checkpoint alone (`network_from_checkpoint`);
it never imports the trainer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kitsseg.atomic import atomic_path
from kitsseg.errors import KitssegError
from kitsseg.network.vbnet import VBNet
from kitsseg.planning import Plans, StagePlan

REQUIRED_KEYS = ("state_dict", "plans", "stage", "epoch")


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with `weights_only=True` and check the keys; clear error for anything else."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise KitssegError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise KitssegError(f"{path}: not a valid checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise KitssegError(f"{path}: checkpoint lacks {', '.join(k for k in REQUIRED_KEYS if k not in state)}")
    return state


def stage_from_checkpoint(state: dict, source: str = "checkpoint") -> tuple[Plans, StagePlan]:
    plans = Plans.from_dict(state["plans"], source)
    return plans, plans.stage(state["stage"])


def network_from_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[VBNet, Plans, StagePlan]:
    """The network of a checkpoint in eval mode, with its plans and stage plan."""
    state = load_checkpoint(path, device)
    plans, stage = stage_from_checkpoint(state, str(path))
    with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
        network = VBNet(stage.network)
    try:
        network.load_state_dict(state["state_dict"], assign=True)
    except RuntimeError as exc:
        raise KitssegError(f"{path}: weights do not match the stage's network "
                           f"({str(exc).splitlines()[0]})") from None
    return network.to(device).eval(), plans, stage
