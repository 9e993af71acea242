import numpy as np
import pytest

from kitsseg.training.sampling import CachedVolume, CropSampler, crop


def volume_with_kidney():
    label = np.zeros((40, 50, 60), np.uint8)
    label[10:30, 15:35, 20:30] = 1
    label[12:15, 16:19, 21:24] = 2  # a small tumour
    image = np.where(label > 0, 0.5, -0.5).astype(np.float16)
    return CachedVolume("c", image, label, np.argwhere(label > 0).astype(np.int32),
                        np.argwhere(label >= 2).astype(np.int32))


def test_crop_pads_outside():
    a = np.arange(27).reshape(3, 3, 3)
    out = crop(a, (-1, 1, 2), (2, 3, 2), -9)
    assert out.shape == (2, 3, 2)
    assert (out[0] == -9).all()
    np.testing.assert_array_equal(out[1, :2, 0], [5, 8])
    assert (out[1, 2] == -9).all() and (out[1, :, 1] == -9).all()


def test_paper_fine_crops_are_centred_in_the_mask():
    volume = volume_with_kidney()
    sampler = CropSampler(centred_on_mask=True, lesion_fraction=0.33, outside_fraction=0.0)
    rng = np.random.default_rng(0)
    centres = [sampler.centre(volume, rng) for _ in range(2000)]
    inside = np.mean([volume.label[tuple(c)] > 0 for c in centres])
    assert inside >= 0.95
    on_lesion = np.mean([volume.label[tuple(c)] == 2 for c in centres])
    assert on_lesion == pytest.approx(0.33, abs=0.05)  # a 27-voxel tumour in a 4000-voxel kidney


def test_outside_fraction_draws_elsewhere():
    volume = volume_with_kidney()
    sampler = CropSampler(centred_on_mask=True, lesion_fraction=0.0, outside_fraction=0.5)
    rng = np.random.default_rng(1)
    inside = np.mean([volume.label[tuple(sampler.centre(volume, rng))] > 0 for _ in range(2000)])
    kidney_share = (volume.label > 0).mean()
    assert inside == pytest.approx(0.5 + 0.5 * kidney_share, abs=0.05)


def test_coarse_crops_stay_inside_or_pad_when_small():
    volume = volume_with_kidney()
    sampler = CropSampler(centred_on_mask=False)
    rng = np.random.default_rng(2)
    image, label = sampler.sample(volume, (32, 32, 32), rng)
    assert image.shape == (32, 32, 32) and (image != -1).all()  # fits: no padding
    image, label = sampler.sample(volume, (48, 64, 64), rng)
    assert image.shape == (48, 64, 64) and label.sum() == volume.label.sum()  # whole volume inside
