"""kits_predict over many inputs: list cases, predict each, write label maps and summary.csv.

A failing case is reported (stderr and summary.csv) and the others go on; existing
outputs are skipped unless `overwrite`; inputs are never written.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from kitsseg.atomic import atomic_path, remove_leftovers
from kitsseg.errors import KitssegError
from kitsseg.inference.ensemble import save_probabilities as save_probabilities_npz
from kitsseg.inference.predictor import Predictor
from kitsseg.io import IMAGE_SUFFIXES, case_id_of, load_volume, read_header, save_label_map
from kitsseg.label_stats import label_histogram
from kitsseg.planning import FINE
from kitsseg.visualization import overlay_png

SUMMARY_COLUMNS = ["case", "status", "kidneys_found", "kidney_ml", "tumor_ml", "cyst_ml", "seconds"]


def _is_dicom_folder(folder: Path) -> bool:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns about every non-DICOM folder
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def list_inputs(source: Path) -> list[tuple[str, Path]]:
    """(case id, path) for an image file, a folder of images, a DICOM folder, or a folder of DICOM folders."""
    if not source.exists():
        raise KitssegError(f"{source}: input not found")
    if source.is_file():
        return [(case_id_of(source), source)]
    if _is_dicom_folder(source):
        return [(source.name, source)]
    items = [p for p in sorted(source.iterdir())
             if (p.is_file() and p.name.endswith(IMAGE_SUFFIXES)) or (p.is_dir() and _is_dicom_folder(p))]
    if not items:
        raise KitssegError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM series found")
    return [(case_id_of(p), p) for p in items]


def _volumes_ml(labels: np.ndarray, spacing_mm) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = label_histogram(labels)
    return {"kidney_ml": round(counts[1] * voxel_ml, 2), "tumor_ml": round(counts[2] * voxel_ml, 2),
            "cyst_ml": round(counts[3] * voxel_ml, 2)}


def predict_case(predictor: Predictor, source: Path, target: Path, save_probabilities: bool = False,
                 overlay: bool = False) -> dict:
    start = time.perf_counter()
    header, itemsize = read_header(source)
    predictor.require_memory(source, header.shape, header.spacing_mm, itemsize)
    image_hu, props = load_volume(source)
    if np.issubdtype(image_hu.dtype, np.floating) and not np.isfinite(image_hu).all():
        raise KitssegError(f"{source}: image holds NaN or infinite voxels")
    result = predictor.predict_array(image_hu, props.spacing_mm, keep_probabilities=save_probabilities,
                                     source=source)
    case_id = target.name[: -len(".nii.gz")]
    if save_probabilities:
        save_probabilities_npz(result.probabilities, props, predictor.plans.stage(FINE).class_names,
                               target.parent, case_id)
    if overlay:
        overlay_png(image_hu, result.labels, props.spacing_mm, target.parent / f"{case_id}.png", title=case_id)
    save_label_map(result.labels, props, target)
    status = "ok" if result.kidneys_found else "warning: no kidney found"
    return {"status": status, "kidneys_found": result.kidneys_found,
            **_volumes_ml(result.labels, props.spacing_mm), "seconds": round(time.perf_counter() - start, 2)}


def predict_inputs(predictor: Predictor, source: Path, out_dir: Path, overwrite: bool = False,
                   quiet: bool = False, save_probabilities: bool = False, overlays: bool = False) -> int:
    """Predict every input; return the number of failed cases."""
    inputs = list_inputs(Path(source))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)  # a killed run's partial files are never taken as outputs
    rows, failed = [], 0
    for case_id, path in tqdm(inputs, desc="predict", disable=quiet, unit="case"):
        target = out_dir / f"{case_id}.nii.gz"
        if target.exists() and not overwrite:
            rows.append({"case": case_id, "status": "skipped: output exists"})
            continue
        try:
            rows.append({"case": case_id, **predict_case(predictor, path, target, save_probabilities, overlays)})
        except KitssegError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            rows.append({"case": case_id, "status": f"error: {exc}"})
    with atomic_path(out_dir / "summary.csv") as tmp:
        pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(tmp, index=False)
    return failed
