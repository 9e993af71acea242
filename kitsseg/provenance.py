"""kitsseg_run.json beside every prediction folder: which code, plans, folds and checkpoints made it."""
from __future__ import annotations

import datetime
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Sequence

from kitsseg import __version__
from kitsseg.atomic import write_json
from kitsseg.planning import Plans

RUN_RECORD = "kitsseg_run.json"


def plans_hash(plans: Plans) -> str:
    """sha256 of the plans as sorted JSON."""
    return hashlib.sha256(json.dumps(plans.to_dict(), sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_version(package: str) -> str | None:
    """A package's installed version without importing it (None when absent: the ONNX Runtime path has no torch)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_run_record(out_dir: Path, plans: Plans, folds: Sequence[str], checkpoints: Sequence[Path],
                     arguments: dict) -> dict:
    """Write `out_dir/kitsseg_run.json` and return it."""
    record = {"kitsseg_version": __version__, "torch_version": installed_version("torch"),
              "onnxruntime_version": installed_version("onnxruntime"),
              "python_version": platform.python_version(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dataset_name": plans.dataset_name, "plans_sha256": plans_hash(plans), "folds": list(folds),
              "checkpoints": [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in checkpoints],
              "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()}}
    write_json(record, Path(out_dir) / RUN_RECORD)
    return record
