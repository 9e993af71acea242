import numpy as np
import pytest

from kitsseg.errors import KitssegError
from kitsseg.training.sampling import CropSampler, cached_volume, crop, jittered_box

VOI = (slice(5, 35), slice(10, 40), slice(15, 35))


def kidney_voi(case_id="c", lesion=True, rng_seed=0):
    """A 40 x 50 x 60 fine array whose VOI (5:35, 10:40, 15:35) holds a kidney and maybe a small tumour."""
    label = np.zeros((40, 50, 60), np.uint8)
    label[10:30, 15:35, 20:30] = 1
    if lesion:
        label[12:15, 16:19, 21:24] = 2  # 27 voxels in a 4000-voxel kidney
    image = np.where(label > 0, 0.5, -0.5).astype(np.float16)
    return cached_volume(case_id, image, label, VOI, np.random.default_rng(rng_seed))


def centre_labels(sampler, volumes, draws, seed):
    rng = np.random.default_rng(seed)
    labels, chosen = [], []
    for _ in range(draws):
        volume, centre = sampler.draw(volumes, rng)
        labels.append(volume.label[tuple(centre)])
        chosen.append(volume.case_id)
    return np.array(labels), np.array(chosen)


def test_crop_pads_outside():
    a = np.arange(27).reshape(3, 3, 3)
    out = crop(a, (-1, 1, 2), (2, 3, 2), -9)
    assert out.shape == (2, 3, 2)
    assert (out[0] == -9).all()
    np.testing.assert_array_equal(out[1, :2, 0], [5, 8])
    assert (out[1, 2] == -9).all() and (out[1, :, 1] == -9).all()


def test_lesion_share_is_the_requested_fraction_when_few_vois_have_a_lesion():
    """One VOI of four has a tumour. Class first: 30% of the centres on tumour, 20% on background in the
    VOI, 50% on kidney spread over the four VOIs. A VOI drawn first would give 30% x 1/4 = 7.5% tumour."""
    volumes = [kidney_voi("tumour", lesion=True)] + [kidney_voi(f"plain{k}", lesion=False) for k in range(3)]
    sampler = CropSampler(centred_on_mask=True, pad_value=-1.0, lesion_fraction=0.3, outside_fraction=0.2)
    labels, chosen = centre_labels(sampler, volumes, 4000, seed=0)
    assert np.mean(labels == 2) == pytest.approx(0.30, abs=0.025)  # binomial sd 0.007
    assert np.mean(labels == 0) == pytest.approx(0.20, abs=0.025)
    assert np.mean(labels == 1) == pytest.approx(0.50, abs=0.025)
    assert set(chosen[labels == 2]) == {"tumour"}
    kidney_from_plain = np.mean(np.char.startswith(chosen[labels == 1], "plain"))
    assert kidney_from_plain == pytest.approx(0.75, abs=0.04)  # kidney centres: any of the four VOIs


def test_fractions_of_absent_classes_go_to_the_others():
    volumes = [kidney_voi(f"plain{k}", lesion=False) for k in range(2)]
    sampler = CropSampler(centred_on_mask=True, pad_value=-1.0, lesion_fraction=0.4, outside_fraction=0.15)
    labels, _ = centre_labels(sampler, volumes, 3000, seed=1)
    assert np.mean(labels == 0) == pytest.approx(0.15 / 0.6, abs=0.03)  # no lesion anywhere: 0.15 of 0.6
    assert np.mean(labels == 1) == pytest.approx(0.45 / 0.6, abs=0.03)


def test_background_centres_lie_in_the_jittered_voi():
    volume = kidney_voi()
    for jitter in (0, 3):
        sampler = CropSampler(centred_on_mask=True, pad_value=-1.0, lesion_fraction=0.0, outside_fraction=1.0,
                              voi_jitter_voxels=(jitter,) * 3)
        rng = np.random.default_rng(2)
        centres = np.array([sampler.draw([volume], rng)[1] for _ in range(1500)])
        assert (volume.label[tuple(centres.T)] == 0).all()
        low = np.array([b.start for b in VOI])
        high = np.array([b.stop for b in VOI])
        assert (centres >= low - jitter).all() and (centres < high + jitter).all()
        beyond = (centres < low) | (centres >= high)  # per axis: outside the VOI's own faces
        if jitter == 0:
            assert not beyond.any()
        else:
            assert beyond.any(axis=0).all()  # the jitter moves faces outwards on every axis


def test_jittered_box_moves_faces_by_at_most_the_jitter_and_stays_inside():
    rng = np.random.default_rng(3)
    boxes = [jittered_box((slice(1, 8), slice(10, 20), slice(0, 5)), (2, 2, 2), (9, 30, 6), rng) for _ in range(500)]
    starts = np.array([[b.start for b in box] for box in boxes])
    stops = np.array([[b.stop for b in box] for box in boxes])
    np.testing.assert_array_equal(starts.min(0), [0, 8, 0])  # 1 - 2 clipped to 0; 10 - 2; 0 - 2 clipped
    np.testing.assert_array_equal(starts.max(0), [3, 12, 2])
    np.testing.assert_array_equal(stops.min(0), [6, 18, 3])
    np.testing.assert_array_equal(stops.max(0), [9, 22, 6])  # 8 + 2 clipped to 9; 5 + 2 clipped to 6


def test_crops_pad_with_the_plans_padding_value():
    volume = kidney_voi()
    sampler = CropSampler(centred_on_mask=True, pad_value=-4.0, lesion_fraction=0.0)
    image, label = sampler.sample([volume], (48, 16, 16), np.random.default_rng(4))
    assert image.shape == (48, 16, 16) and (image == -4.0).any()  # 48 > 40: the crop leaves the array in z
    assert set(np.unique(image)) <= {-4.0, -0.5, 0.5}
    image, _ = sampler.sample([volume], (8, 8, 8), np.random.default_rng(4))
    assert (image != -4.0).all()  # 4 voxels either side of a kidney voxel: inside the array


def test_fractions_must_add_up():
    with pytest.raises(KitssegError, match="lesion 0.7 and outside 0.4"):
        CropSampler(centred_on_mask=True, pad_value=-1.0, lesion_fraction=0.7, outside_fraction=0.4)


def test_coarse_crops_stay_inside_or_pad_when_small():
    fine = kidney_voi()
    volume = cached_volume("c", fine.image, fine.label, None, np.random.default_rng(0))  # no VOI: the whole array
    sampler = CropSampler(centred_on_mask=False, pad_value=-1.0)
    rng = np.random.default_rng(2)
    image, label = sampler.sample([volume], (32, 32, 32), rng)
    assert image.shape == (32, 32, 32) and (image != -1).all()  # fits: no padding
    image, label = sampler.sample([volume], (48, 64, 64), rng)
    assert image.shape == (48, 64, 64) and label.sum() == volume.label.sum()  # whole volume inside


def test_the_sampler_for_a_stage_follows_the_plans_recipe():
    from kitsseg.planning import COARSE, FINE
    from tests.test_predictor import paper_plans

    plans = paper_plans()
    fine = CropSampler.for_stage(plans.stage(FINE), -1.0, plans.stage(FINE).training)
    assert (fine.centred_on_mask, fine.lesion_fraction, fine.outside_fraction) == (True, 0.33, 0.0)
    assert fine.voi_jitter_voxels == (6, 6, 6)  # one 6 mm coarse voxel at 1 mm
    coarse = CropSampler.for_stage(plans.stage(COARSE), -4.0, plans.stage(COARSE).training)
    assert (coarse.centred_on_mask, coarse.pad_value) == (False, -4.0)
