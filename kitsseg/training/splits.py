"""Cross-validation splits in nnU-Net's format: a list of {"train": [...], "val": [...]}."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from kitsseg.atomic import write_json
from kitsseg.errors import KitssegError

NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    """nnU-Net v2's folds: sklearn KFold(shuffle=True, random_state=seed) over the sorted ids.

    The index order is shuffled by ``np.random.RandomState(seed)``; fold k validates the next
    ``n // num_folds`` (+1 for the first ``n % num_folds`` folds) shuffled indices. Both lists keep
    the sorted order, as nnU-Net writes them.
    """
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise KitssegError(f"{len(ids)} cases are too few for {num_folds}-fold cross-validation")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(num_folds, len(ids) // num_folds)
    sizes[:len(ids) % num_folds] += 1
    splits = []
    for fold in np.split(order, np.cumsum(sizes)[:-1]):
        val = set(fold.tolist())
        splits.append({"train": [c for i, c in enumerate(ids) if i not in val],
                       "val": [c for i, c in enumerate(ids) if i in val]})
    return splits


def load_or_create_splits(path: Path, case_ids: Sequence[str]) -> list[dict]:
    """Read splits_final.json, or write it once; warn (never rewrite) when the cases changed."""
    if path.exists():
        try:
            splits = json.loads(path.read_text())
            listed = {c for fold in splits for c in fold["val"]}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise KitssegError(f"{path}: invalid splits ({exc})") from None
        dataset = set(case_ids)
        if listed != dataset:
            lacking = len(listed - dataset)
            warnings.warn(f"{path}: the folds' validation sets cover {len(listed & dataset)} of the dataset's "
                          f"{len(dataset)} cases" + (f" and list {lacking} it lacks" if lacking else "")
                          + "; keeping the file (delete it to make new splits)")
        return splits
    splits = make_splits(case_ids)
    write_json(splits, path)
    return splits
