import numpy as np
import pytest

from kitsseg.training.data import CropLoader
from kitsseg.training.lesion_paste import EDGE_VOXELS, Lesion, LesionPaste, lesion_bank, paste, rescaled
from kitsseg.training.sampling import CropSampler, cached_volume


def volume_with_lesions():
    """A 30^3 array: a kidney block holding a 3x3x3 tumour (27 voxels), a 2-voxel tumour speck and a
    tumour+cyst region of 4x4x4 (48 tumour and 16 cyst voxels)."""
    label = np.zeros((30, 30, 30), np.uint8)
    label[2:28, 2:28, 2:28] = 1
    label[4:7, 4:7, 4:7] = 2
    label[20, 20, 20:22] = 2
    label[10:14, 15:19, 15:19] = 2
    label[13, 15:19, 15:19] = 3
    image = np.where(label == 1, 0.5, np.where(label >= 2, -0.25, -1.0)).astype(np.float16)
    return cached_volume("c", image, label, None, np.random.default_rng(0))


def test_lesion_bank_keeps_each_region_with_its_labels_and_drops_specks():
    bank = lesion_bank([volume_with_lesions()])
    assert sorted(lesion.voxels for lesion in bank) == [27, 64]  # the 2-voxel speck is under 8
    mixed = max(bank, key=lambda lesion: lesion.voxels)
    assert mixed.label.shape == (4, 4, 4)
    assert np.count_nonzero(mixed.label == 2) == 48 and np.count_nonzero(mixed.label == 3) == 16
    np.testing.assert_allclose(mixed.image, -0.25)


def test_rescaled_reaches_the_target_volume_and_mirrors():
    label = np.zeros((10, 10, 10), np.uint8)
    label[:, :, :5] = 2  # 500 voxels, the left half
    lesion = Lesion(np.where(label > 0, 1.0, 0.0).astype(np.float32), label)
    half = rescaled(lesion, 500 / 8, (False, False, False))
    assert half.label.shape == (5, 5, 5)
    assert half.voxels in range(50, 76)  # 62.5 voxels: the half of a 5-voxel axis rounds to 2 or 3 columns
    mirrored = rescaled(lesion, 500, (False, False, True))
    assert mirrored.voxels == 500
    assert (mirrored.label[:, :, 5:] == 2).all() and (mirrored.label[:, :, :5] == 0).all()


def test_paste_writes_over_kidney_only_and_blends_the_lesion_edge():
    image = np.zeros((12, 12, 12), np.float32)
    label = np.zeros((12, 12, 12), np.uint8)
    label[:, :, :6] = 1  # kidney in x < 6, background beyond
    lesion_label = np.full((5, 5, 5), 2, np.uint8)
    lesion = Lesion(np.ones((5, 5, 5), np.float32), lesion_label)
    paste(image, label, lesion, (6, 6, 5))  # covers [4:9, 4:9, 3:8]
    assert np.count_nonzero(label == 2) == 5 * 5 * 3  # x 3, 4, 5: the kidney part only
    assert (label[4:9, 4:9, 6:8] == 0).all() and (image[:, :, 6:] == 0).all()
    assert image[6, 6, 5] == 1.0  # three voxels deep: the lesion's image
    assert image[4, 6, 5] == pytest.approx(1 / EDGE_VOXELS)  # its outer voxel: half and half
    assert (image[label == 1] == 0).all()


def test_paste_share_and_volumes():
    """fraction 0.5: about half the crops get lesion voxels, about 1-30 ml of them at 2 mm."""
    volume = volume_with_lesions()
    paster = LesionPaste.from_volumes([volume], 0.5, (2.0, 2.0, 2.0))
    rng = np.random.default_rng(1)
    pasted_ml = []
    for _ in range(400):
        image, label = volume.image.astype(np.float32), volume.label.copy()
        before = np.count_nonzero(label >= 2)
        paster(image, label, (3, 3, 3), rng)
        pasted_ml.append((np.count_nonzero(label >= 2) - before) * paster.voxel_ml)
    pasted_ml = np.array(pasted_ml)
    assert 0.43 < np.mean(pasted_ml > 0) < 0.57
    assert pasted_ml.max() <= 1.3 * 30 and np.median(pasted_ml[pasted_ml > 0]) > 1.0


def test_no_paste_without_fraction_or_lesions():
    volume = volume_with_lesions()
    assert LesionPaste.from_volumes([volume], 0.0, (2.0, 2.0, 2.0)) is None
    empty = cached_volume("e", volume.image, np.minimum(volume.label, 1), None, np.random.default_rng(0))
    assert LesionPaste.from_volumes([empty], 0.5, (2.0, 2.0, 2.0)) is None


def test_loader_pastes_into_its_crops():
    volume = volume_with_lesions()
    sampler = CropSampler(centred_on_mask=True, pad_value=-1.0, lesion_fraction=0.0)
    paster = LesionPaste.from_volumes([volume], 1.0, (2.0, 2.0, 2.0))
    plain = CropLoader([volume], sampler, (16, 16, 16), 4, False, seed=3)
    pasted = CropLoader([volume], sampler, (16, 16, 16), 4, False, seed=3, paste=paster, paste_margin=(2, 2, 2))
    lesion_voxels = [sum(np.count_nonzero(next(loader)["seg"] >= 2) for _ in range(3)) for loader in (plain, pasted)]
    assert lesion_voxels[1] > lesion_voxels[0]
