"""Stage validation after training scores the VOI, not the context cached around it for the crops."""
import numpy as np
import torch
from torch import nn

from kitsseg.planning import FINE
from kitsseg.training.sampling import CachedVolume
from kitsseg.training.validation import validate_stage
from tests.test_predictor import paper_plans


class LabelFromImage(nn.Module):
    """An oracle 'network': the image holds the class index; logits are its one-hot, times 20."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.seen = num_classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[2:]))
        classes = x.round().clamp(0, self.num_classes - 1).long()[:, 0]
        return nn.functional.one_hot(classes, self.num_classes).permute(0, 4, 1, 2, 3).float() * 20


def test_fine_validation_scores_the_voi_only():
    stage = paper_plans(cysts=False).stage(FINE)
    label = np.zeros((60, 60, 60), np.uint8)
    label[20:40, 20:40, 20:40] = 1
    label[28:32, 28:32, 28:32] = 2
    image = label.astype(np.float16)
    label[2:8, 2:8, 2:8] = 1  # a kidney in the context that the image does not show: outside the VOI
    voi = (slice(14, 46), slice(14, 46), slice(14, 46))
    volume = CachedVolume("case_00000", image, label, voi, np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32))
    network = LabelFromImage(stage.num_classes)
    summary = validate_stage(network, stage, [volume], torch.device("cpu"), -1.0, quiet=True)
    assert summary["mean"] == {"dice_kidney": 1.0, "dice_tumor": 1.0}  # the whole array: kidney below 1
    assert network.seen == [(32, 32, 32)]  # the 32^3 VOI, not the 60^3 array
