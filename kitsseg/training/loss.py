"""Losses on logits: the VB-Net paper's generalized Dice, optionally plus cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def generalized_dice(probabilities: torch.Tensor, target_one_hot: torch.Tensor) -> torch.Tensor:
    """D = 1/C * sum_c 2 sum_i p_c g_c / (sum_i p_c^2 + sum_i g_c^2) over foreground classes c >= 1.

    Sums run over the batch and all voxels; a class absent from both gives 1.
    """
    dims = (0, *range(2, probabilities.ndim))
    p, g = probabilities[:, 1:], target_one_hot[:, 1:]
    intersection = (p * g).sum(dims)
    denominator = (p * p).sum(dims) + (g * g).sum(dims)
    return ((2 * intersection + SMOOTH) / (denominator + SMOOTH)).mean()


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) integer labels -> (B, C, *spatial) float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


class SegmentationLoss(torch.nn.Module):
    """1 - generalized Dice ('gdice'), plus cross-entropy for 'gdice_ce'."""

    def __init__(self, kind: str = "gdice"):
        super().__init__()
        if kind not in ("gdice", "gdice_ce"):
            raise ValueError(f"unknown loss {kind!r} (use gdice or gdice_ce)")
        self.kind = kind

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        loss = 1 - generalized_dice(probabilities, one_hot(labels, logits.shape[1]))
        if self.kind == "gdice_ce":
            loss = loss + F.cross_entropy(logits.float(), labels.long())
        return loss
