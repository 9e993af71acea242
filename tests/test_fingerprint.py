import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg.fingerprint import extract_fingerprint


def test_phantom_fingerprint(phantom_raw):
    fp = extract_fingerprint(phantom_raw, quiet=True)
    assert sorted(fp.cases) == [f"case_0000{i}" for i in range(5)]
    for case_id, entry in fp.cases.items():
        image = sitk.ReadImage(str(phantom_raw / "imagesTr" / f"{case_id}_0000.nii.gz"))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_raw / "labelsTr" / f"{case_id}.nii.gz")))
        assert entry["shape"] == list(image.GetSize()[::-1])  # identity direction: (z, y, x) = reversed
        assert entry["spacing_mm"] == list(image.GetSpacing()[::-1])
        voxel_ml = np.prod(image.GetSpacing()) / 1000
        assert entry["voxels_per_label"]["1"] == int((labels == 1).sum())
        assert entry["volume_ml_per_label"]["1"] == pytest.approx((labels == 1).sum() * voxel_ml, abs=1e-3)
        assert len(entry["kidney_boxes_mm"]) == 2  # two kidneys per phantom
    spacings = np.array([e["spacing_mm"] for e in fp.cases.values()])
    assert fp.median_spacing_mm == pytest.approx(tuple(np.median(spacings, axis=0)))
    stats = fp.foreground_intensity
    assert stats["min"] <= stats["percentile_00_5"] <= stats["mean"] <= stats["percentile_99_5"] <= stats["max"]
    assert 50 < stats["mean"] < 250  # enhancing kidney and tumour HU


def test_fingerprint_is_seeded(phantom_raw):
    a = extract_fingerprint(phantom_raw, seed=0, quiet=True).foreground_intensity
    b = extract_fingerprint(phantom_raw, seed=0, quiet=True).foreground_intensity
    assert a == b


def test_kits19_geometry_is_reordered_to_zyx(shared_data, tmp_path):
    raw = tmp_path / "raw"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    case = "case_00061"  # 29 slices of 5 mm, KiTS19 orientation
    src = shared_data / "kits19" / case / "segmentation.nii.gz"
    shutil.copy(src, raw / "labelsTr" / f"{case}.nii.gz")
    seg = sitk.ReadImage(str(src))
    sitk.WriteImage(sitk.Cast(seg, sitk.sitkInt16) * 150, str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "numTraining": 1,
                                                  "labels": {"background": 0, "kidney": 1, "tumor": 2},
                                                  "file_ending": ".nii.gz"}))
    entry = extract_fingerprint(raw, quiet=True).cases[case]
    size, spacing = seg.GetSize(), seg.GetSpacing()  # (slices, 512, 512), (5, s, s)
    assert entry["shape"] == [size[0], size[1], size[2]]  # canonical z is the slice axis
    assert entry["spacing_mm"] == pytest.approx([spacing[0], spacing[1], spacing[2]])
    assert entry["orientation"] == "IPL"
