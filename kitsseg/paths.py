"""Where data lives: ROOT = --data-root, else $KITSSEG_DATA, else ./kitsseg_data."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
