import doctest
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

import kitsseg.io as kio
from kitsseg.errors import KitssegError
from tests.conftest import KITS19_DIRECTION, make_image


def test_doctests():
    assert doctest.testmod(kio).failed == 0


def geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_kits19_orientation_is_canonicalised_by_hand(tmp_path):
    # raw (k, j, i) = (x-slices... ) : image axis x is the slice axis pointing inferior
    raw = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)  # i has 2 slices
    path = tmp_path / "k.nii.gz"
    sitk.WriteImage(make_image(raw, spacing_xyz=(5.0, 0.75, 0.5)), str(path))
    array, props = kio.load_volume(path, np.int16)
    assert props.orientation == "IPL"
    assert props.spacing_mm == (5.0, 0.75, 0.5)
    assert array.shape == (2, 3, 4) == props.shape
    # canonical z goes superior, i.e. against raw i; canonical x is raw k
    np.testing.assert_array_equal(array, np.transpose(raw, (2, 1, 0))[::-1])


def test_round_trip_synthetic_all_formats(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    source = make_image(raw, spacing_xyz=(2.5, 0.7, 0.9))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        src = tmp_path / f"in{suffix}"
        sitk.WriteImage(source, str(src))
        labels, props = kio.load_volume(src, np.uint8)
        out = tmp_path / f"out{suffix}"
        kio.save_label_map(labels, props, out)
        back = sitk.ReadImage(str(out))
        assert geometry(back) == geometry(sitk.ReadImage(str(src)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), raw)


@pytest.mark.parametrize("relative", ["kits19/case_00002/segmentation.nii.gz",
                                      "real-ct/example_ct.nii.gz", "real-ct/example_ct_dicom"])
def test_round_trip_real_geometry(shared_data, tmp_path, relative):
    src = shared_data / relative
    original = kio.read_image(src)
    array, props = kio.load_volume(src, np.int32)
    out = tmp_path / "out.nii.gz"
    kio.write_image(kio.to_sitk(array, props), out)
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == original.GetSize()
    # NIfTI stores geometry as float32; a DICOM series' doubles survive to that precision
    np.testing.assert_allclose(back.GetSpacing(), original.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))
    if not src.is_dir():
        assert geometry(back) == geometry(original)


def test_real_ct_is_ras_flipped_and_canonicalised(shared_data):
    array, props = kio.load_volume(shared_data / "real-ct/example_ct.nii.gz")
    assert props.orientation == "RAS"
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "real-ct/example_ct.nii.gz")))
    np.testing.assert_array_equal(array, raw[:, ::-1, ::-1])


def test_case_properties_json_round_trip():
    props = kio.CaseProperties((2, 3, 4), (0.5, 0.6, 3.0), (1.0, 2.0, 3.0), KITS19_DIRECTION)
    assert kio.CaseProperties.from_dict(props.to_dict()) == props


def _nifti(tmp_path, array, name="x.nii.gz"):
    path = tmp_path / name
    sitk.WriteImage(make_image(array), str(path))
    return path


def test_truncated_gzip_is_detected(tmp_path):
    path = _nifti(tmp_path, np.random.default_rng(0).normal(size=(20, 30, 30)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KitssegError, match="truncated"):
        kio.read_image(path)


def test_truncated_but_valid_gzip_stream_is_detected(tmp_path):
    # a complete gzip stream that holds only part of the NIfTI payload
    path = _nifti(tmp_path, np.ones((20, 30, 30), np.int16), "full.nii.gz")
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[: len(payload) - 1000]))
    with pytest.raises(KitssegError, match="truncated"):
        kio.read_image(path)


def _multi_member(tmp_path, array):
    """A .nii.gz made of two concatenated gzip members (valid gzip; zlib and SimpleITK read it)."""
    payload = gzip.decompress(_nifti(tmp_path, array, "single.nii.gz").read_bytes())
    half = len(payload) // 2
    return gzip.compress(payload[:half]) + gzip.compress(payload[half:])


def test_multi_member_gzip_loads(tmp_path):
    array = np.random.default_rng(1).normal(size=(20, 30, 30)).astype(np.float32)
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(_multi_member(tmp_path, array))
    assert np.array_equal(sitk.GetArrayFromImage(kio.read_image(path)), array)


@pytest.mark.parametrize("cut", ["bytes", "payload"])
def test_truncated_multi_member_gzip_is_detected(tmp_path, cut):
    array = np.random.default_rng(1).normal(size=(20, 30, 30)).astype(np.float32)
    data = _multi_member(tmp_path, array)
    if cut == "payload":  # every member complete, the last one short of the header's size
        payload = gzip.decompress(data)
        data = gzip.compress(payload[:1000]) + gzip.compress(payload[1000:-1000])
    else:
        data = data[: len(data) * 3 // 4]
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(data)
    with pytest.raises(KitssegError, match="truncated") as info:
        kio.read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_plain_nifti_is_detected(tmp_path):
    path = _nifti(tmp_path, np.ones((10, 10, 10), np.int16), "x.nii")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(KitssegError, match="truncated"):
        kio.read_image(path)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"hello, not an image\n" * 50, "gzip")])
def test_empty_and_text_files(tmp_path, content, message):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    with pytest.raises(KitssegError, match=message) as info:
        kio.read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_2d_and_4d_images_are_rejected(tmp_path):
    path2d = tmp_path / "two.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(path2d))
    with pytest.raises(KitssegError, match="expected a 3D image, got 2D"):
        kio.read_image(path2d)
    path4d = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))] * 2), str(path4d))
    with pytest.raises(KitssegError, match="got 4D"):
        kio.read_image(path4d)


def test_missing_file_and_folder_without_dicom(tmp_path):
    with pytest.raises(KitssegError, match="not found"):
        kio.read_image(tmp_path / "nope.nii.gz")
    with pytest.raises(KitssegError, match="no DICOM series"):
        kio.read_image(tmp_path)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(RuntimeError):
        with kio.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
