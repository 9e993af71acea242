"""Stage-level validation after training: whole volumes, not crops.

Coarse: kidney-region Dice on each validation case's whole 6 mm volume. Fine: Dice per
class on each whole ground-truth VOI at the fine spacing (the kidney's box and VOI margin inside
the cached array, without the context cached around it for the training crops).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kitsseg.inference.sliding_window import predict_volume, tile_for
from kitsseg.inference.torch_engine import TorchEngine
from kitsseg.planning import StagePlan
from kitsseg.training.sampling import CachedVolume


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2 * (prediction & reference).sum() / total)


@torch.no_grad()
def validate_stage(network: nn.Module, stage: StagePlan, volumes: list[CachedVolume],
                   device: torch.device, padding_value: float, precision: str = "auto", quiet: bool = False) -> dict:
    """Dice per case and its mean, the passes run as `kits_predict` runs them (`TorchEngine`)."""
    network.eval()
    run, rows = TorchEngine(device, precision).ensemble([network], tta=False), []
    for volume in tqdm(volumes, desc="validation", disable=quiet, leave=False):
        image = volume.image[volume.voi].astype(np.float32)  # fine: the VOI, not the cached context around it
        probabilities = predict_volume(run, image, stage.num_classes, stage.network.stride,
                                       tile_for(image.shape, stage.patch_size), pad_value=padding_value)
        predicted = probabilities.argmax(0)
        label = volume.label[volume.voi]
        reference = (label > 0).astype(np.uint8) if stage.merges_foreground else label
        rows.append({"case": volume.case_id, **{f"dice_{name}": dice_score(predicted == c, reference == c)
                                                 for c, name in enumerate(stage.class_names) if c > 0}})
    keys = [k for k in rows[0] if k != "case"] if rows else []
    return {"stage": stage.name, "per_volume": rows,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}
