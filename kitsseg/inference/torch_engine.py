"""The PyTorch engine: trained VB-Nets from checkpoints, run on a CPU or a CUDA device.

`TorchEngine.ensemble` wraps torch models as the numpy function the cascade calls
(`kitsseg.inference.engine`) in channels_last_3d, with mixed precision where the device runs it
natively (`kitsseg.device.autocast_dtype`: float16 on CUDA, bfloat16 on CPUs with AMX or
AVX512-BF16). Batch norms are folded into the convolutions at load (`fold_batch_norms`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from kitsseg.checkpoint import network_from_checkpoint
from kitsseg.device import autocast_dtype, precision_name
from kitsseg.errors import KitssegError
from kitsseg.inference.engine import ArrayFn, mirrorings
from kitsseg.planning import COARSE, FINE, Plans

CHECKPOINT = "checkpoint_final.pt"


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """Fold each batch norm that follows a convolution into it, in place (eval mode): the same function
    up to float rounding, without the norms' outputs, so a pass is faster and needs less memory."""
    for module in list(network.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)) and isinstance(norm, nn.BatchNorm3d):
                    conv.weight, conv.bias = fuse_conv_bn_weights(
                        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight,
                        norm.bias, transpose=isinstance(conv, nn.ConvTranspose3d))
                    module[i + 1] = nn.Identity()
    return network


def for_inference(network: nn.Module) -> nn.Module:
    """An eval-mode network with folded batch norms in channels_last_3d, the layout of the engine's passes."""
    return fold_batch_norms(network).to(memory_format=torch.channels_last_3d)


class TorchEngine:
    """Runs torch callables (VB-Nets, or oracles in tests) from (1, 1, z, y, x) tensors to logits."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", precision: str = "auto"):
        self.device = torch.device(device)
        self.autocast = autocast_dtype(self.device, precision)
        self.precision = precision_name(self.autocast)

    def free_device_bytes(self) -> int | None:
        return torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None

    def ensemble(self, models: Sequence, tta: bool) -> ArrayFn:
        flips, dtype = mirrorings(tta), self.autocast

        @torch.no_grad()
        def run(batch: np.ndarray) -> np.ndarray:
            x, total = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last_3d), 0
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                for model in models:
                    for axes in flips:
                        probabilities = torch.softmax(model(torch.flip(x, axes) if axes else x).float(), 1)
                        total = total + (torch.flip(probabilities, axes) if axes else probabilities)
            return (total / (len(models) * len(flips))).float().cpu().numpy()
        return run


def trained_folds(model_dir: Path) -> list[str]:
    """Folds with a final checkpoint for both stages."""
    found = [{p.parent.name[5:] for p in (model_dir / s).glob(f"fold_*/{CHECKPOINT}")} for s in (COARSE, FINE)]
    folds = sorted(found[0] & found[1])
    if not folds:
        raise KitssegError(f"{model_dir}: no fold has a {CHECKPOINT} for both {COARSE} and {FINE}")
    return folds


def load_model_dir(model_dir: Path, folds: Sequence[str], device: torch.device
                   ) -> tuple[Plans, dict[str, list[nn.Module]], list[Path]]:
    """The plans, each stage's folded networks (one per fold) and the checkpoints they came from."""
    models, plans, checkpoints = {COARSE: [], FINE: []}, None, []
    for stage in (COARSE, FINE):
        for fold in folds:
            checkpoints.append(model_dir / stage / f"fold_{fold}" / CHECKPOINT)
            network, fold_plans, _ = network_from_checkpoint(checkpoints[-1], device)
            if plans is not None and fold_plans.intensity != plans.intensity:
                raise KitssegError(f"{model_dir}: fold {fold} of {stage} was trained with other plans")
            plans = fold_plans
            models[stage].append(for_inference(network))
    return plans, models, checkpoints


def network_from_weights(weights: bytes, plans: Plans, stage: str, device: torch.device, source: str) -> nn.Module:
    """A folded eval-mode VB-Net from a safetensors state dict, checked against the stage's network
    (missing or extra tensors, shapes) with one line naming `source`."""
    from safetensors.torch import load

    from kitsseg.deploy.bundle import shape_differences
    from kitsseg.network.vbnet import VBNet

    network = VBNet(plans.stage(stage).network)
    state_dict = load(weights)
    problem = shape_differences({k: list(v.shape) for k, v in state_dict.items()},
                                {k: list(v.shape) for k, v in network.state_dict().items()})
    if problem:
        raise KitssegError(f"{source}: weights do not fit this kitsseg's {stage} network ({problem})")
    network.load_state_dict(state_dict)
    return for_inference(network.to(device).eval())
