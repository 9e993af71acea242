"""DICOM Segmentation output (kits_predict --output-format dicom-seg), written with highdicom.

For a DICOM series input, the label map becomes one DICOM SEG object that references the
source series (same study, patient and frame of reference) with one segment per class,
described by SNOMED CT concepts: kidney (an anatomical structure), tumour (a neoplasm) and
cyst (morphologically abnormal structures, in the kidney). Frames follow the source
images: frame k is the label map's slice on source image k. A scan where no kidney is
found still gets a valid object (its segments are empty).

Anonymised series sometimes blank the UIDs a reference needs: the SOP Class and Instance
UIDs are then taken from each file's meta header (the file's own identity), and blank Study or
Series Instance UIDs are derived from the series' content (the same for every run), with a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from kitsseg import __version__
from kitsseg.atomic import atomic_path
from kitsseg.errors import KitssegError
from kitsseg.io import CaseProperties, _dicom_series_files, from_canonical
from kitsseg.labels import ClassMap

SUFFIX = ".seg.dcm"


def _highdicom():
    try:
        import highdicom
        from pydicom.sr.codedict import codes
    except ImportError:
        raise KitssegError("--output-format dicom-seg needs highdicom: pip install 'kitsseg[dicom]'") from None
    return highdicom, codes


def segment_concepts(name: str, codes) -> tuple:
    """(category, type, anatomic regions) of a class's SNOMED CT codes; an unknown class is tissue."""
    kidney, abnormal = codes.SCT.Kidney, codes.SCT.MorphologicallyAbnormalStructure
    known = {"kidney": (codes.SCT.AnatomicalStructure, kidney, None),
             "tumor": (abnormal, codes.SCT.Neoplasm, [kidney]),
             "cyst": (abnormal, codes.SCT.Cyst, [kidney])}
    return known.get(name, (codes.SCT.Tissue, codes.SCT.Tissue, None))


def segment_numbers(labels: np.ndarray, classes: ClassMap) -> np.ndarray:
    """Label-file values -> DICOM segment numbers (1, 2, ... in class order; 0 stays background).

    >>> segment_numbers(np.array([0, 1, 2, 3]), ClassMap(("background", "kidney", "cyst"), (0, 1, 3))).tolist()
    [0, 1, 0, 2]
    """
    lookup = np.zeros(256, np.uint8)
    for number, value in enumerate(classes.label_values[1:], start=1):
        lookup[value] = number
    return lookup[labels]


def referenceable(sources: Sequence, series_folder: Path) -> list:
    """The source datasets with the UIDs a SEG must reference (see the module notes)."""
    from pydicom.uid import generate_uid

    for ds in sources:
        for uid, meta in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(uid):
                value = getattr(ds.file_meta, meta, None) if hasattr(ds, "file_meta") else None
                if not value:
                    raise KitssegError(f"{ds.filename}: no {uid} (nor in its file meta): it cannot be referenced")
                setattr(ds, uid, value)
    content = sorted(str(ds.SOPInstanceUID) for ds in sources)
    blank = [uid for uid in ("StudyInstanceUID", "SeriesInstanceUID") if not all(ds.get(uid) for ds in sources)]
    for uid in blank:
        derived = generate_uid(entropy_srcs=[uid, *content])
        for ds in sources:
            setattr(ds, uid, derived)
    if blank:
        warnings.warn(f"{series_folder}: the series has no {', '.join(blank)}; the DICOM SEG refers to ones "
                      "derived from its images")
    return list(sources)


def write_dicom_seg(labels: np.ndarray, props: CaseProperties, series_folder: Path, classes: ClassMap,
                    target: Path) -> None:
    """Write the canonical label map `labels` (label-file values) of a DICOM series as a DICOM SEG file."""
    hd, codes = _highdicom()
    import pydicom

    series_folder = Path(series_folder)
    if not series_folder.is_dir():
        raise KitssegError(f"{series_folder}: --output-format dicom-seg needs a DICOM series as input")
    sources = referenceable([pydicom.dcmread(f, stop_before_pixels=True) for f in _dicom_series_files(series_folder)],
                            series_folder)
    frames = segment_numbers(from_canonical(labels, props), classes)  # (source image, row, column)
    if frames.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise KitssegError(f"{series_folder}: the series' images do not match the label map {frames.shape}")
    algorithm = hd.AlgorithmIdentificationSequence(name="kitsseg", version=__version__,
                                                  family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, name in enumerate(classes.names[1:], start=1):
        category, kind, regions = segment_concepts(name, codes)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=regions))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="kitsseg",
        manufacturer_model_name="kitsseg cascade", software_versions=__version__, device_serial_number="none",
        series_description="kitsseg kidney segmentation", omit_empty_frames=bool(frames.any()))
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
