"""kits_predict over many inputs: list cases, predict each, write label maps and summary.csv.

A failing case is reported (stderr and summary.csv) and the others go on; existing
outputs are kept (with their summary rows) unless `overwrite`, and only when kitsseg_run.json
says the same model and settings made them; inputs are never written.
With `profile`, each case's stages are timed (printed, and kept in profile.json).
"""
from __future__ import annotations

import csv
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from kitsseg.atomic import atomic_path, remove_leftovers, write_json
from kitsseg.errors import KitssegError
from kitsseg.inference.ensemble import save_probabilities as save_probabilities_npz
from kitsseg.inference.predictor import LOWERED_COARSE_THRESHOLD, MAX_KIDNEY_REGION_ML, CascadeResult, Predictor
from kitsseg.dicom_seg import SUFFIX as DICOM_SEG_SUFFIX, write_dicom_seg
from kitsseg.io import (IMAGE_SUFFIXES, OBLIQUE_LIMIT_DEG, axis_aligned_grid, case_id_of, is_oblique, labels_onto,
                        load_volume, read_header, save_label_map)
from kitsseg.kidney_sides import side_volumes_ml
from kitsseg.label_stats import label_histogram
from kitsseg.labels import ClassMap
from kitsseg.profiling import Profile, stage
from kitsseg.provenance import RUN_RECORD, labels_difference, read_run_record, run_record

NO_KIDNEY_FOUND = "no_kidney_found"  # summary.csv status: not even the lowered coarse threshold found a kidney


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


def summary_columns(classes: ClassMap) -> list[str]:
    return ["case", "status", "kidneys_found", *[f"{name}_ml" for name in classes.names[1:]], "right_kidney_ml",
            "left_kidney_ml", "seconds"]


def volumes_ml(labels: np.ndarray, spacing_mm, classes: ClassMap) -> dict[str, float]:
    """Volume of each foreground class (e.g. kidney_ml, tumor_ml, cyst_ml)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = label_histogram(labels)
    return {f"{name}_ml": round(float(counts[value]) * voxel_ml, 2)
            for name, value in zip(classes.names[1:], classes.label_values[1:])}


def predict_case(predictor: Predictor, source: Path, target: Path, save_probabilities: bool = False,
                 overlay: bool = False, output_format: str = "nifti") -> dict:
    """Predict one input into `target` (and, with output_format 'dicom-seg', a DICOM SEG beside it)."""
    start = time.perf_counter()
    if output_format == "dicom-seg" and not Path(source).is_dir():
        raise KitssegError(f"{source}: --output-format dicom-seg needs a DICOM series folder as input")
    with stage("read + canonical orientation"):
        header, itemsize = read_header(source)
        oblique = is_oblique(header)  # predicted on the axes, its labels brought back to its own grid
        if oblique and save_probabilities:
            raise KitssegError(f"{source}: an oblique image (more than {OBLIQUE_LIMIT_DEG:g} degrees off the "
                               "axes) is predicted on the axes, so its probabilities cannot be saved on its "
                               "grid: predict it without --save-probabilities")
        grid = axis_aligned_grid(header) if oblique else header
        predictor.require_memory(source, grid.shape, grid.spacing_mm, itemsize)
        image_hu, props = load_volume(source, aligned=oblique)
        if np.issubdtype(image_hu.dtype, np.floating) and not np.isfinite(image_hu).all():
            raise KitssegError(f"{source}: image holds NaN or infinite voxels")
    result = predictor.predict_array(image_hu, props.spacing_mm, keep_probabilities=save_probabilities,
                                     source=source)
    case_id = target.name[: -len(".nii.gz")]
    with stage("writing"):
        if save_probabilities:
            save_probabilities_npz(result.probabilities, props, predictor.plans.classes, target.parent, case_id)
        if overlay:
            from kitsseg.visualization import overlay_png  # matplotlib: 0.5 s of start-up, only when asked
            overlay_png(image_hu, result.labels, props.spacing_mm, target.parent / f"{case_id}.png", title=case_id)
        labels, own = (labels_onto(result.labels, props, header), header) if oblique else (result.labels, props)
        save_label_map(labels, own, target)
        if output_format == "dicom-seg":
            write_dicom_seg(labels, own, source, predictor.plans.classes, target.with_name(case_id + DICOM_SEG_SUFFIX))
        volumes = volumes_ml(labels, own.spacing_mm, predictor.plans.classes)
        volumes.update(side_volumes_ml(result.labels, props.spacing_mm, result.midline_x))
    return {"status": case_status(result, source), "kidneys_found": result.kidneys_found, **volumes,
            "seconds": round(time.perf_counter() - start, 2)}


def case_status(result: CascadeResult, source: Path) -> str:
    """summary.csv's status of a predicted case; a case without a kidney also gets one warning line."""
    if not result.kidneys_found:
        print(f"warning: {source}: no kidney found (at the coarse stage, kidney probability under "
              f"{LOWERED_COARSE_THRESHOLD:g} everywhere, or a region over {MAX_KIDNEY_REGION_ML:g} ml, which is no "
              "kidney, or only regions longer than any kidney with no kidney tissue in them); its label map is all "
              "background", file=sys.stderr)
        return NO_KIDNEY_FOUND
    if result.coarse_threshold < 0.5:
        return f"ok: kidney found at the lowered coarse threshold {result.coarse_threshold:g}"
    return "ok"


def _profiled_case(predictor: Predictor, source: Path, target: Path, save_probabilities: bool, overlay: bool,
                   output_format: str, profiles: dict) -> dict:
    """`predict_case` with its stages timed: the table is printed and the profile kept in `profiles`."""
    profile = Profile()
    with profile.active():
        row = predict_case(predictor, source, target, save_probabilities, overlay, output_format)
    case_id = target.name[: -len(".nii.gz")]
    profiles[case_id] = profile.to_dict()
    print(f"{case_id}\n{profile.table()}")
    return row


def _existing_row(case_id: str, target: Path, previous: dict[str, dict], classes: ClassMap) -> dict:
    """The summary row of an output a previous run wrote: its row, else volumes read from the file."""
    row = previous.get(case_id)
    if row is not None and str(row.get("status", "")).startswith(("ok", "warning", NO_KIDNEY_FOUND)):
        return row
    labels, props = load_volume(target, np.uint8)
    return {"case": case_id, "status": "ok: output of a previous run", **volumes_ml(labels, props.spacing_mm, classes)}


def _previous_rows(summary: Path) -> dict[str, dict]:
    try:
        with open(summary, newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return {row["case"]: {k: v for k, v in row.items() if k and v not in (None, "")}
            for row in table if row.get("case")}


def _write_summary(rows: list[dict], classes: ClassMap, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=summary_columns(classes), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _outputs_to_keep(out_dir: Path, case_ids: list[str], record: dict) -> list[str]:
    """The cases whose outputs exist; an error when kitsseg_run.json says another model or settings made them."""
    kept = [c for c in case_ids if (out_dir / f"{c}.nii.gz").exists()]
    previous = read_run_record(out_dir) if kept else None
    difference = labels_difference(previous, record) if previous else None
    if difference:
        raise KitssegError(f"{out_dir}: its {len(kept)} existing prediction(s) were made with other {difference}; "
                           "pass --overwrite to redo them, or choose another output folder")
    return kept


def predict_inputs(predictor: Predictor, source: Path, out_dir: Path, overwrite: bool = False,
                   quiet: bool = False, save_probabilities: bool = False, overlays: bool = False,
                   arguments: dict | None = None, profile: bool = False, output_format: str = "nifti") -> int:
    """Predict every input; return the number of failed cases.

    summary.csv is rewritten after each case; outputs kept from a previous run keep their rows.
    `arguments` (the command's) go into kitsseg_run.json with the plans, folds and checkpoints.
    With `profile`, the stages of each predicted case are printed and written to profile.json
    (seconds and peak RSS bytes per stage).
    """
    inputs = list_inputs(Path(source))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)  # a killed run's partial files are never taken as outputs
    record = run_record(predictor.plans, predictor.folds, predictor.checkpoints,
                        {**(arguments or {}), "precision_used": predictor.engine.precision,
                         "lesion_weight_used": predictor.postprocess.lesion_weight})
    if not overwrite:
        kept = _outputs_to_keep(out_dir, [case_id for case_id, _ in inputs], record)
        if kept:
            print(f"keeping {len(kept)} existing prediction(s) in {out_dir} (--overwrite redoes them)")
    write_json(record, out_dir / RUN_RECORD)
    summary, classes = out_dir / "summary.csv", predictor.plans.classes
    previous = _previous_rows(summary)
    rows, failed, profiles = [], 0, {}
    predict = partial(_profiled_case, profiles=profiles) if profile else predict_case
    for case_id, path in tqdm(inputs, desc="predict", disable=quiet, unit="case"):
        target = out_dir / f"{case_id}.nii.gz"
        try:
            if target.exists() and not overwrite:
                rows.append(_existing_row(case_id, target, previous, classes))
            else:
                rows.append({"case": case_id, **predict(predictor, path, target, save_probabilities, overlays,
                                                        output_format)})
        except KitssegError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            rows.append({"case": case_id, "status": f"error: {exc}"})
        _write_summary(rows, classes, summary)
        if profile:
            write_json(profiles, out_dir / "profile.json")
    return failed
