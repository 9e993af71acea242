import doctest

import numpy as np
import pytest

import kitsseg.resampling as rs


def test_doctests():
    assert doctest.testmod(rs).failed == 0


@pytest.mark.parametrize("n_in, n_out", [(10, 3), (7, 7), (4, 9), (512, 68)])
def test_weights_are_normalised(n_in, n_out):
    w = rs.axis_weights(n_in, n_out)
    assert w.shape == (n_out, n_in)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    assert (w >= 0).all()


def test_box_weights_by_hand():
    # 3 inputs -> 2 outputs: each output covers 1.5 inputs
    np.testing.assert_allclose(rs.axis_weights(3, 2), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], rtol=1e-6)


def test_linear_upsampling_by_hand():
    # 2 -> 4: centres at -0.25, 0.25, 0.75, 1.25 input voxels, clamped at the edges
    np.testing.assert_allclose(rs.axis_weights(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])


def test_resampling_commutes_with_flips_and_transposes():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 14, 5)).astype(np.float32)
    out = rs.resample(a, (4, 20, 3))
    flipped = rs.resample(np.transpose(a, (2, 0, 1))[::-1], (3, 4, 20))
    np.testing.assert_allclose(flipped, np.transpose(out, (2, 0, 1))[::-1], rtol=1e-5, atol=1e-6)


def test_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(-1000, 1000, size=(40, 30, 20)).astype(np.int16)
    whole = rs.resample(a, (7, 11, 26))
    monkeypatch.setattr(rs, "CHUNK_VOXELS", 100)
    np.testing.assert_allclose(rs.resample(a, (7, 11, 26)), whole, rtol=1e-5, atol=1e-3)


def test_mean_is_preserved_when_shrinking_by_whole_factors():
    a = np.random.default_rng(2).normal(size=(12, 12, 12))
    out = rs.resample(a, (4, 3, 6))
    assert out.mean() == pytest.approx(a.mean(), abs=1e-6)
    assert out[0, 0, 0] == pytest.approx(a[:3, :4, :2].mean(), abs=1e-6)


def test_label_resampling_keeps_a_small_structure():
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[10:40, 10:40, 10:40] = 1
    labels[20:26, 20:26, 20:26] = 2  # 6^3 voxels, one output voxel at factor 6
    out = rs.resample_labels(labels, (10, 10, 10), [0, 1, 2])
    # output voxel i covers inputs [6i, 6i + 6): the tumour fills (4/6)^3 of voxel (3, 3, 3), where the
    # kidney has the rest, so only the keep-every-label rule puts it there
    assert (out == 2).sum() == 1 and out[3, 3, 3] == 2
    # kidney voxels 2..6 per axis, less those with two or three coordinates at 6 (covered <= (4/6)^2)
    assert (out == 1).sum() == 5 ** 3 - (3 * 4 + 1) - 1


def test_shape_at_spacing():
    assert rs.shape_at_spacing((261, 512, 512), (1.0, 0.94, 0.94), (6, 6, 6)) == (44, 80, 80)
    assert rs.shape_at_spacing((3, 4, 5), (1, 1, 1), (100, 100, 100)) == (1, 1, 1)


def test_a_label_smaller_than_a_voxel_is_kept():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 5:25] = 1
    labels[14, 14, 14] = 2  # one voxel: 1/1000 of an output voxel
    out = rs.resample_labels(labels, (3, 3, 3), [0, 1, 2])
    assert (out == 2).sum() == 1 and out[1, 1, 1] == 2


def kits_view(raw: np.ndarray) -> np.ndarray:
    """The canonical view of a KiTS19 array (slice axis first and flipped): strided, nothing copied."""
    return np.flip(np.transpose(raw, (2, 1, 0)), 0)


def weight_matrices(array: np.ndarray, shape_out) -> np.ndarray:
    """The separable resampling written out: the three axis weight matrices applied at once, in float64."""
    wz, wy, wx = (rs.axis_weights(n, m).astype(np.float64) for n, m in zip(array.shape, shape_out))
    return np.einsum("ai,bj,ck,ijk->abc", wz, wy, wx, array.astype(np.float64))


@pytest.mark.parametrize("shape_out", [(7, 5, 9), (30, 12, 40)])  # shrinking; mixed shrinking and growing
def test_a_strided_view_in_chunks_resamples_as_the_weight_matrices(monkeypatch, shape_out):
    view = kits_view(np.random.default_rng(3).integers(-1000, 1000, size=(23, 17, 41)).astype(np.int16))
    monkeypatch.setattr(rs, "CHUNK_VOXELS", 300)  # chunks of a few slices along the view's slowest axis
    np.testing.assert_allclose(rs.resample(view, shape_out), weight_matrices(view, shape_out), rtol=1e-5, atol=1e-3)


def test_label_resampling_of_a_strided_view_in_chunks_equals_one_chunk(monkeypatch):
    view = kits_view(np.random.default_rng(4).integers(0, 4, size=(24, 18, 40)).astype(np.uint8))
    whole = rs.resample_labels(view, (9, 7, 13), [0, 1, 2, 3])
    monkeypatch.setattr(rs, "CHUNK_VOXELS", 200)
    assert np.array_equal(rs.resample_labels(view, (9, 7, 13), [0, 1, 2, 3]), whole)


def test_a_strided_view_is_never_copied_whole(monkeypatch):
    import tracemalloc

    view = kits_view(np.zeros((64, 64, 256), np.int16))  # 2 MB, 16 chunks of 64 KB below
    monkeypatch.setattr(rs, "CHUNK_VOXELS", 2**14)
    tracemalloc.start()
    try:
        rs.resample(view, (20, 10, 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < view.nbytes / 4
