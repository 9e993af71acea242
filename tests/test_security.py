"""Untrusted files: nothing in the package can unpickle or evaluate code."""
import re
from pathlib import Path

import pytest
import torch

from kitsseg.checkpoint import load_checkpoint
from kitsseg.errors import KitssegError

PACKAGE_DIRS = [Path(__file__).resolve().parents[1] / d for d in ("kitsseg", "dataset_conversion")]
FORBIDDEN = [r"\bpickle\b", r"allow_pickle\s*=\s*True", r"weights_only\s*=\s*False", r"(?<![.\w])eval\(",
             r"(?<![.\w])exec\("]  # the builtins, not nn.Module.eval()


def test_no_pickle_eval_or_exec_in_the_package():
    offenders = []
    for folder in PACKAGE_DIRS:
        for path in folder.rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if any(re.search(pattern, line) for pattern in FORBIDDEN):
                    offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "plans": {}, "stage": "3d_fine", "epoch": 0, "x": Payload()}, path)
    with pytest.raises(KitssegError, match="not a valid checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_without_its_keys_is_refused(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(KitssegError, match="lacks plans, stage, epoch"):
        load_checkpoint(path)
