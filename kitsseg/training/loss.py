"""Losses on logits: the VB-Net paper's generalized Dice, optionally plus cross-entropy, or a
per-crop Dice plus cross-entropy that weighs a small tumour's crop as much as a large one's."""
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


def crop_dice(probabilities: torch.Tensor, target_one_hot: torch.Tensor) -> torch.Tensor | None:
    """Soft Dice 2 sum_i p g / (sum_i p^2 + sum_i g^2) per crop and foreground class, averaged over the
    (crop, class) pairs whose reference holds the class; None when no crop holds any.

    Batch sums (`generalized_dice`) let a large tumour in one crop outweigh a small one in another;
    here each crop with a lesion counts once. Pairs without the class are left to cross-entropy.
    """
    dims = tuple(range(2, probabilities.ndim))
    p, g = probabilities[:, 1:], target_one_hot[:, 1:]
    reference = (g * g).sum(dims)
    present = reference > 0
    if not present.any():
        return None
    dice = 2 * (p * g).sum(dims) / ((p * p).sum(dims) + reference).clamp_min(SMOOTH)
    return dice[present].mean()


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) integer labels -> (B, C, *spatial) float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


LOSSES = ("gdice", "gdice_ce", "crop_dice_ce")


class SegmentationLoss(torch.nn.Module):
    """1 - generalized Dice ('gdice'), plus cross-entropy for 'gdice_ce'; 'crop_dice_ce' is
    1 - `crop_dice` (0 for a batch without foreground) plus cross-entropy."""

    def __init__(self, kind: str = "gdice"):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r} (use {', '.join(LOSSES)})")
        self.kind = kind

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        target = one_hot(labels, logits.shape[1])
        if self.kind == "crop_dice_ce":
            dice = crop_dice(probabilities, target)
            loss = 0.0 if dice is None else 1 - dice
        else:
            loss = 1 - generalized_dice(probabilities, target)
        if self.kind != "gdice":
            loss = loss + F.cross_entropy(logits.float(), labels.long())
        return loss


class DeepSupervisionLoss(torch.nn.Module):
    """`loss` over [full, 1/2, 1/4, ...] resolution logits with weights 1, 1/2, 1/4, ... (normalised
    to sum 1, as nnU-Net weighs them); each level's labels are the full labels subsampled by nearest
    neighbour (every 2^k-th voxel, offset 2^k / 2). A single tensor is scored as `loss` alone."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor | list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss(logits, labels)
        weights = [0.5 ** level for level in range(len(logits))]
        total = 0.0
        for level, (level_logits, weight) in enumerate(zip(logits, weights)):
            step = 2 ** level
            level_labels = labels[(slice(None), *[slice(step // 2, None, step)] * (labels.ndim - 1))]
            if level_labels.shape[1:] != level_logits.shape[2:]:
                raise ValueError(f"level {level}: logits {tuple(level_logits.shape[2:])} against labels "
                                 f"{tuple(level_labels.shape[1:])}")
            total = total + weight * self.loss(level_logits, level_labels)
        return total / sum(weights)
