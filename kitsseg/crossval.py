"""kits_crossval: predict each fold's validation cases with the full cascade, pool, evaluate, and
decide postprocessing as nnU-Net does.

ROOT/results/NAME/crossval/{unprocessed,postprocessed}/<case>.nii.gz with per_case.csv and
summary.json in each; ROOT/results/NAME/postprocessing.json holds the decision: keep one
kidney component per VOI (postprocessing.py) only if the pooled mean Dice improves and no
region gets worse.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from kitsseg.atomic import write_json
from kitsseg.dataset import list_cases
from kitsseg.errors import KitssegError
from kitsseg.evaluation import REGIONS, evaluate_folders
from kitsseg.inference.predictor import Predictor
from kitsseg.inference.torch_engine import CHECKPOINT
from kitsseg.io import IMAGE_SUFFIXES, load_volume, save_label_map
from kitsseg.paths import DatasetPaths
from kitsseg.planning import STAGES
from kitsseg.postprocessing import PostprocessConfig
from kitsseg.provenance import write_run_record

DICE_COLUMNS = [f"{region}_dice" for region in REGIONS]


def trained_folds(results: Path) -> list[str]:
    found = [{p.parent.name[5:] for p in (results / s).glob(f"fold_*/{CHECKPOINT}")} for s in STAGES]
    return sorted((found[0] & found[1]) - {"all"})


def remove_label_maps(folders: Sequence[Path]) -> None:
    """Delete the label maps (and reference links) in `folders`, so a rerun with other folds or new
    checkpoints evaluates only the cases it predicts, with its own models."""
    for folder in folders:
        for path in Path(folder).glob("*"):
            if path.name.endswith(IMAGE_SUFFIXES) and (path.is_file() or path.is_symlink()):
                path.unlink()


def decide_postprocessing(unprocessed: dict, postprocessed: dict) -> bool:
    """Keep one component per VOI only if mean Dice over regions improves and no region worsens."""
    before = [unprocessed["mean"][c] for c in DICE_COLUMNS]
    after = [postprocessed["mean"][c] for c in DICE_COLUMNS]
    return sum(after) > sum(before) and all(a >= b - 1e-9 for a, b in zip(after, before))


def run_crossval(paths: DatasetPaths, folds: Sequence[str] | None = None, device: str = "auto",
                 quiet: bool = False) -> dict:
    folds = list(folds) if folds else trained_folds(paths.results)
    if not folds:
        raise KitssegError(f"{paths.results}: no fold has both stages trained (kits_train 3d_coarse/3d_fine K)")
    splits = json.loads(paths.splits.read_text())
    info, cases = list_cases(paths.raw)
    images = {c.case_id: c.image for c in cases}
    out = paths.results / "crossval"
    folders = {"unprocessed": out / "unprocessed", "postprocessed": out / "postprocessed"}
    references = out / "references"
    remove_label_maps([*folders.values(), references])  # an earlier run's: never pooled with this run's
    checkpoints = []
    for fold in folds:
        predictor = Predictor.from_model_dir(paths.results, [fold], device, postprocess=PostprocessConfig(True))
        checkpoints += predictor.checkpoints
        for case_id in tqdm(splits[int(fold)]["val"], desc=f"crossval fold {fold}", disable=quiet, unit="case"):
            image_hu, props = load_volume(images[case_id])
            result = predictor.predict_array(image_hu, props.spacing_mm, keep_unprocessed=True)
            save_label_map(result.unprocessed, props, folders["unprocessed"] / f"{case_id}.nii.gz")
            save_label_map(result.labels, props, folders["postprocessed"] / f"{case_id}.nii.gz")
    for folder in folders.values():
        write_run_record(folder, predictor.plans, folds, checkpoints, {"command": "kits_crossval", "device": device})
    validated = {c for fold in folds for c in splits[int(fold)]["val"]}
    references.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = references / case.label.name
        if case.case_id in validated and not link.exists():
            link.symlink_to(case.label.resolve())
    summaries = {name: evaluate_folders(references, folder, folder, "all", quiet) for name, folder in folders.items()}
    keep = decide_postprocessing(summaries["unprocessed"], summaries["postprocessed"])
    decision = {"keep_largest_kidney_component": keep, "lesion_weight": predictor.postprocess.lesion_weight,
                "folds": folds,
                "mean_dice_unprocessed": {c: summaries["unprocessed"]["mean"][c] for c in DICE_COLUMNS},
                "mean_dice_postprocessed": {c: summaries["postprocessed"]["mean"][c] for c in DICE_COLUMNS}}
    write_json(decision, paths.results / "postprocessing.json")
    return decision
