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


SETTINGS_THAT_CHANGE_LABELS = ("tta", "no_postprocess")  # kits_predict arguments, besides the model itself


def run_record(plans: Plans, folds: Sequence[str], checkpoints: Sequence[Path], arguments: dict) -> dict:
    """What kitsseg_run.json holds: code versions, plans hash, folds, checkpoint hashes, the command's arguments."""
    return {"kitsseg_version": __version__, "torch_version": installed_version("torch"),
            "onnxruntime_version": installed_version("onnxruntime"),
            "python_version": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dataset_name": plans.dataset_name, "plans_sha256": plans_hash(plans), "folds": list(folds),
            "checkpoints": [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in checkpoints],
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()}}


def write_run_record(out_dir: Path, plans: Plans, folds: Sequence[str], checkpoints: Sequence[Path],
                     arguments: dict) -> dict:
    """Write `out_dir/kitsseg_run.json` and return it."""
    record = run_record(plans, folds, checkpoints, arguments)
    write_json(record, Path(out_dir) / RUN_RECORD)
    return record


def read_run_record(out_dir: Path) -> dict | None:
    """`out_dir/kitsseg_run.json`, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((Path(out_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def labels_difference(previous: dict, current: dict) -> str | None:
    """The first thing that makes two runs' label maps differ (plans, folds, checkpoints, the lesion
    weight used, --tta, --no-postprocess), named for an error message, else None."""
    if previous.get("plans_sha256") != current["plans_sha256"]:
        return "plans"
    if previous.get("folds") != current["folds"]:
        return f"folds ({', '.join(map(str, previous.get('folds') or []))} before, {', '.join(current['folds'])} now)"
    if [c.get("sha256") for c in previous.get("checkpoints", [])] != [c["sha256"] for c in current["checkpoints"]]:
        return "checkpoints"
    before, now = (record.get("arguments", {}).get("lesion_weight_used", 1.0) for record in (previous, current))
    if before != now:  # runs before the weighted decision recorded none: they took the plain argmax
        return f"lesion weight ({before:g} before, {now:g} now)"
    for name in SETTINGS_THAT_CHANGE_LABELS:
        before, now = previous.get("arguments", {}).get(name), current["arguments"].get(name)
        if bool(before) != bool(now):
            return f"--{name.replace('_', '-')} ({'on' if before else 'off'} before, {'on' if now else 'off'} now)"
    return None
