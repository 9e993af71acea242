"""Where data lives: ROOT = --data-root, else $KITSSEG_DATA, else ./kitsseg_data.

A dataset is named as its folder (`KiTS19`, `Dataset220_KiTS2023`) or, as in nnU-Net, by its
numeric ID (`220` finds `Dataset220_*` under ROOT/raw, ROOT/preprocessed or ROOT/results).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kitsseg.errors import KitssegError

DEFAULT_DATASET = "KiTS19"


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The data root from the flag, the environment, or the default, in that order."""
    if data_root:
        return Path(data_root)
    return Path(os.environ.get("KITSSEG_DATA") or "kitsseg_data")


@dataclass(frozen=True)
class DatasetPaths:
    """The folders of one dataset under a data root."""

    root: Path
    name: str = DEFAULT_DATASET

    @property
    def raw(self) -> Path:
        return self.root / "raw" / self.name

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed" / self.name

    @property
    def results(self) -> Path:
        return self.root / "results" / self.name

    @property
    def fingerprint(self) -> Path:
        return self.preprocessed / "fingerprint.json"

    @property
    def plans(self) -> Path:
        return self.preprocessed / "plans.json"

    @property
    def splits(self) -> Path:
        return self.preprocessed / "splits_final.json"

    def stage_dir(self, stage: str) -> Path:
        return self.preprocessed / stage


def resolve_dataset_name(root: Path, name: str) -> str:
    """`name` itself, or for a numeric ID the one `Dataset<ID:03d>_*` folder found under the root."""
    if not name.isdigit():
        return name
    prefix = f"Dataset{int(name):03d}_"
    found = sorted({p.name for area in ("raw", "preprocessed", "results") if (root / area).is_dir()
                    for p in (root / area).iterdir() if p.is_dir() and p.name.startswith(prefix)})
    if not found:
        raise KitssegError(f"{root / 'raw'}: no dataset with ID {name} (expected a folder {prefix}NAME)")
    if len(found) > 1:
        raise KitssegError(f"{root}: dataset ID {name} is ambiguous ({', '.join(found)}); give the full name")
    return found[0]
