"""Ensembling saved probabilities of several models (kits_predict --save-probabilities).

Each model saved, per case, the fine probabilities of its VOIs on the original grid.
Boxes that overlap across models form one kidney cluster; inside a cluster every model's
probabilities are averaged (outside its own boxes a model says background), then the class
decision (lesions weighted, `kitsseg.postprocessing`) and per-cluster postprocessing; the coarse
masks are not saved, so the kept kidney component is the largest.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kitsseg.atomic import atomic_path, write_json
from kitsseg.boxes import box_from_list, box_to_list
from kitsseg.errors import KitssegError
from kitsseg.io import CaseProperties, save_label_map
from kitsseg.labels import ClassMap
from kitsseg.postprocessing import PostprocessConfig, decide_classes, postprocess

SUFFIX = "_probabilities"


def save_probabilities(entries: list, props: CaseProperties, classes: ClassMap, out_dir: Path, case_id: str) -> None:
    """`<case>_probabilities.npz` (box_k, probabilities_k) and a JSON sidecar with geometry and classes."""
    arrays = {}
    for k, (box, probabilities) in enumerate(entries):
        arrays[f"box_{k}"] = np.array(box_to_list(box), dtype=np.int64)
        arrays[f"probabilities_{k}"] = probabilities
    with atomic_path(out_dir / f"{case_id}{SUFFIX}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    write_json({"properties": props.to_dict(), "class_names": list(classes.names),
                "label_values": list(classes.label_values), "num_vois": len(entries)},
               out_dir / f"{case_id}{SUFFIX}.json")


def load_probabilities(folder: Path, case_id: str) -> tuple[CaseProperties, ClassMap, list]:
    try:
        meta = json.loads((folder / f"{case_id}{SUFFIX}.json").read_text())
        with np.load(folder / f"{case_id}{SUFFIX}.npz", allow_pickle=False) as data:
            entries = [(box_from_list(data[f"box_{k}"].tolist()), data[f"probabilities_{k}"].astype(np.float32))
                       for k in range(meta["num_vois"])]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise KitssegError(f"{folder / case_id}{SUFFIX}.npz: cannot read probabilities ({exc})") from None
    names = meta["class_names"]
    classes = ClassMap(tuple(names), tuple(meta.get("label_values", range(len(names)))))
    return CaseProperties.from_dict(meta["properties"]), classes, entries


def _overlaps(a, b) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


def _clusters(boxes: list) -> list:
    """Union boxes of groups of mutually overlapping boxes."""
    clusters = []
    for box in boxes:
        merged = [c for c in clusters if _overlaps(c, box)]
        for c in merged:
            clusters.remove(c)
            box = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(c, box))
        clusters.append(box)
    return clusters


def ensemble_case(folders: list[Path], case_id: str, config: PostprocessConfig) -> tuple[np.ndarray, CaseProperties]:
    models = [load_probabilities(f, case_id) for f in folders]
    props, classes = models[0][0], models[0][1]
    for folder, (p, other, _) in zip(folders, models):
        if p != props or other != classes:
            raise KitssegError(f"{folder / case_id}{SUFFIX}.json: geometry or classes differ from {folders[0]}")
    labels = np.zeros(props.shape, np.uint8)
    for cluster in _clusters([box for _, _, entries in models for box, _ in entries]):
        size = [b.stop - b.start for b in cluster]
        total = np.zeros((len(classes.names), *size), np.float32)
        for _, _, entries in models:
            own = np.zeros_like(total)
            own[0] = 1.0
            for box, probabilities in entries:
                if _overlaps(box, cluster):
                    local = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, cluster))
                    own[(slice(None), *local)] = probabilities
            total += own
        labels[cluster] = postprocess(decide_classes(total, config), config)
    return classes.to_label_values(labels), props


def ensemble_folders(folders: list[Path], out_dir: Path, config: PostprocessConfig, quiet: bool = False) -> int:
    """Ensemble every case found in all folders; return the number of failed cases."""
    case_sets = [{p.name[: -len(SUFFIX) - 4] for p in Path(f).glob(f"*{SUFFIX}.npz")} for f in folders]
    cases = sorted(set.intersection(*case_sets)) if case_sets else []
    if not cases:
        raise KitssegError(f"no case has saved probabilities in all of {', '.join(map(str, folders))} "
                           "(run kits_predict --save-probabilities)")
    failed = 0
    for case_id in tqdm(cases, desc="ensemble", disable=quiet, unit="case"):
        try:
            labels, props = ensemble_case([Path(f) for f in folders], case_id, config)
            save_label_map(labels, props, out_dir / f"{case_id}.nii.gz")
        except KitssegError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    return failed
