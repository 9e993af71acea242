"""DICOM SEG output for a DICOM series (the real series in ../shared/data): valid for dciodvfy, the NIfTI
output's voxels when read back with highdicom, the source's frame of reference; and left/right kidney
volumes in summary.csv."""
import csv
import dataclasses
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from kitsseg import cli
from kitsseg.dicom_seg import segment_numbers, write_dicom_seg
from kitsseg.inference.predictor import Predictor
from kitsseg.inference.run import predict_inputs
from kitsseg.io import _dicom_series_files, from_canonical, load_volume
from kitsseg.labels import ClassMap
from kitsseg.planning import FINE
from tests.test_predictor import LEVEL_HU, coarse_oracle, fine_oracle, middle_third, paper_plans

KITS = ClassMap(("background", "kidney", "tumor", "cyst"), (0, 1, 2, 3))
SCT = {"kidney": "64033007", "tumor": "108369006", "cyst": "367643001"}


def dciodvfy_errors(path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def read_back(path, series):
    """The SEG's segment numbers per source image (the series' order), and the SEG dataset."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in _dicom_series_files(series)]
    uids = [str(s.SOPInstanceUID or s.file_meta.MediaStorageSOPInstanceUID) for s in sources]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    return np.asarray(pixels), seg, sources[0]


@pytest.fixture
def series(shared_data):
    return shared_data / "real-ct" / "example_ct_dicom"


@pytest.mark.parametrize("painted", [True, False])
def test_painted_labels_round_trip_through_a_valid_dicom_seg(series, tmp_path, painted):
    image, props = load_volume(series)
    labels = np.zeros(image.shape, np.uint8)
    if painted:
        labels[4:12, 200:260, 100:180] = 1
        labels[6:9, 220:240, 120:140] = 2
        labels[10:12, 250:255, 150:160] = 3
    target = tmp_path / "x.seg.dcm"
    with pytest.warns(UserWarning, match="has no StudyInstanceUID, SeriesInstanceUID"):  # this anonymised series
        write_dicom_seg(labels, props, series, KITS, target)
    assert dciodvfy_errors(target) == []
    pixels, seg, source = read_back(target, series)
    assert np.array_equal(pixels, from_canonical(labels, props))  # KiTS: segment numbers = label values
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    described = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0] for d in seg.SegmentSequence}
    assert {name: (c.CodeValue, c.CodingSchemeDesignator) for name, c in described.items()} == \
           {name: (code, "SCT") for name, code in SCT.items()}


def test_segment_numbers_follow_the_classes_not_the_label_values():
    classes = ClassMap(("background", "kidney", "cyst"), (0, 1, 3))
    assert segment_numbers(np.array([0, 3, 1, 3], np.uint8), classes).tolist() == [0, 2, 1, 2]


def bone_predictor():
    """Oracles that mark bone (> 325 HU) as kidney in the middle third of the scan: real labels on the real series."""
    bone = lambda x: torch.cat([(x <= 0.5).float(), (x > 0.5).float(), -torch.ones_like(x)], 1) * 20  # noqa: E731
    plans = paper_plans(cysts=False)  # the middle third (167 mm across) is wider than any kidney: no length limit
    plans.stages[FINE] = dataclasses.replace(plans.stage(FINE), max_kidney_extent_mm=(0.0, 0.0, 0.0))
    return Predictor(plans, [middle_third], [bone])


@pytest.mark.filterwarnings("ignore:.*the series has no")
def test_kits_predict_writes_a_dicom_seg_with_the_nifti_voxels(series, tmp_path):
    assert predict_inputs(bone_predictor(), series, tmp_path, quiet=True, output_format="dicom-seg") == 0
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{series.name}.nii.gz")))
    target = tmp_path / f"{series.name}.seg.dcm"
    assert dciodvfy_errors(target) == []
    pixels, seg, source = read_back(target, series)
    assert nifti.sum() > 1000 and np.array_equal(pixels, nifti)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID


def test_dicom_seg_needs_a_dicom_series(tmp_path, phantom_raw, tiny_models, capsys):
    code = cli.predict_main(["-i", str(phantom_raw / "imagesTr" / "case_00000_0000.nii.gz"), "-o", str(tmp_path),
                             "-m", str(tiny_models), "--output-format", "dicom-seg", "--quiet", "--device", "cpu"])
    assert code == 1 and "--output-format dicom-seg needs a DICOM series folder" in capsys.readouterr().err


def test_summary_has_left_and_right_kidney_volumes(tmp_path):
    hu = np.full((40, 60, 80), -1000, np.int16)  # air
    hu[:, 5:55, 10:70] = -LEVEL_HU  # the body: background level for the oracles; midline x = 40
    hu[10:30, 20:40, 15:30] = 0  # patient right (canonical x below the midline): 20 x 20 x 15 voxels
    hu[12:28, 20:36, 50:60] = 0  # patient left: 16 x 16 x 10 voxels
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "scan.nii.gz"))  # identity direction: LPS
    predictor = Predictor(paper_plans(cysts=False), [coarse_oracle], [fine_oracle(3)])
    assert predict_inputs(predictor, tmp_path / "scan.nii.gz", tmp_path / "out", quiet=True) == 0
    with open(tmp_path / "out" / "summary.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["right_kidney_ml"]) == pytest.approx(20 * 20 * 15 / 1000, rel=0.1)  # 1 mm voxels
    assert float(row["left_kidney_ml"]) == pytest.approx(16 * 16 * 10 / 1000, rel=0.1)
