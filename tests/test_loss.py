import pytest
import torch

from kitsseg.training.loss import SegmentationLoss, crop_dice, generalized_dice, one_hot


def test_generalized_dice_by_hand():
    # 2 classes, 4 voxels; foreground probabilities p and truth g
    p1 = torch.tensor([0.9, 0.6, 0.2, 0.0])
    g1 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    probabilities = torch.stack([1 - p1, p1])[None, :, :, None, None]  # (1, 2, 4, 1, 1)
    target = torch.stack([1 - g1, g1])[None, :, :, None, None]
    # 2 * (0.9 + 0.6) / ((0.81 + 0.36 + 0.04) + 2) = 3.0 / 3.21
    assert generalized_dice(probabilities, target).item() == pytest.approx(3.0 / 3.21, rel=1e-4)


def test_mean_over_foreground_classes_by_hand():
    labels = torch.tensor([[0, 1, 2, 2]])[..., None, None]
    perfect = one_hot(labels, 3)
    wrong_tumour = perfect.clone()
    wrong_tumour[:, 2, 3] = 0.0
    wrong_tumour[:, 0, 3] = 1.0
    # kidney 1.0, tumour 2*1 / (1 + 2) = 2/3 -> mean 5/6
    assert generalized_dice(wrong_tumour, perfect).item() == pytest.approx(5 / 6, rel=1e-4)


def test_loss_is_zero_for_a_perfect_prediction():
    labels = torch.randint(0, 3, (2, 8, 8, 8))
    logits = one_hot(labels, 3) * 100.0  # softmax is one-hot to float precision
    assert SegmentationLoss("gdice")(logits, labels).item() == pytest.approx(0.0, abs=1e-5)
    assert SegmentationLoss("gdice_ce")(logits, labels).item() == pytest.approx(0.0, abs=1e-5)


def test_loss_is_high_for_a_wrong_prediction():
    labels = torch.ones(1, 4, 4, 4, dtype=torch.long)
    logits = one_hot(torch.zeros_like(labels), 2) * 100.0
    assert SegmentationLoss()(logits, labels).item() == pytest.approx(1.0, abs=1e-4)


def test_crop_dice_weighs_each_crop_with_a_lesion_once():
    # crop 0: a 1-voxel tumour, missed; crop 1: a 7-voxel tumour, found; a batch sum hides the miss
    labels = torch.zeros(2, 8, 1, 1, dtype=torch.long)
    labels[0, 0] = 2
    labels[1, :7] = 2
    target = one_hot(labels, 3)
    predicted = target.clone()
    predicted[0, :, 0] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    batch = generalized_dice(predicted[:, [0, 2]], target[:, [0, 2]]).item()
    assert batch == pytest.approx(2 * 7 / (7 + 8), rel=1e-4)  # 0.93
    # per crop: tumour 0 and 1 -> 0.5; kidney is absent from both crops and left out
    assert crop_dice(predicted, target).item() == pytest.approx(0.5, rel=1e-4)
    assert crop_dice(one_hot(torch.zeros_like(labels), 3), one_hot(torch.zeros_like(labels), 3)) is None


def test_crop_dice_ce_loss_without_foreground_is_cross_entropy():
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    logits = torch.randn(2, 3, 4, 4, 4)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert SegmentationLoss("crop_dice_ce")(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    perfect = one_hot(torch.randint(0, 3, (2, 8, 8, 8)), 3)
    assert SegmentationLoss("crop_dice_ce")(perfect * 100.0, perfect.argmax(1)).item() == pytest.approx(0.0, abs=1e-5)


def test_command_line_offers_every_loss(capsys):
    from kitsseg.cli import train_main
    from kitsseg.training.loss import LOSSES

    with pytest.raises(SystemExit):
        train_main(["3d_fine", "0", "--loss", "none"])
    assert f"choose from {', '.join(map(repr, LOSSES))}" in capsys.readouterr().err


def test_deep_supervision_loss_weighs_levels_by_resolution_on_subsampled_labels():
    from kitsseg.training.loss import DeepSupervisionLoss
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8, 8))
    full, half, quarter = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)
    inner = SegmentationLoss("gdice_ce")
    # level k scores labels[..., 2^k / 2 :: 2^k] (nearest neighbour); weights 1, 1/2, 1/4 over 7/4
    expected = (inner(full, labels) + 0.5 * inner(half, labels[:, 1::2, 1::2, 1::2])
                + 0.25 * inner(quarter, labels[:, 2::4, 2::4, 2::4])) / 1.75
    loss = DeepSupervisionLoss(inner)
    assert loss([full, half, quarter], labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(full, labels).item() == pytest.approx(inner(full, labels).item(), rel=1e-6)
    # perfect logits at every level give 0
    perfect = [one_hot(labels[:, s // 2::s, s // 2::s, s // 2::s], 3) * 100.0 for s in (1, 2, 4)]
    assert loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="level 1"):
        loss([full, quarter], labels)
