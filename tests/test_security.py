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


def test_torch_requirement_excludes_versions_whose_weights_only_load_is_unsafe():
    """Checkpoints rely on torch.load(weights_only=True): torch <= 2.5.1 (CVE-2025-32434) and <= 2.9.1
    (CVE-2026-24747) can run or corrupt code from a crafted file; the CI's torch must still fit."""
    import configparser

    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    listed = config["options"]["install_requires"] + config["options.extras_require"]["torch"]
    requirements = [Requirement(line) for line in listed.split("\n") if line.strip() and not line.strip().startswith("#")]
    torch_spec = next(r.specifier for r in requirements if r.name == "torch")
    assert not any(torch_spec.contains(v) for v in ("2.0.0", "2.5.1", "2.6.0", "2.9.1"))
    assert torch_spec.contains("2.10.0") and torch_spec.contains("2.13.0")


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_a_checkpoint_whose_weights_do_not_fit_its_network_is_refused(tmp_path, damage):
    from kitsseg.checkpoint import network_from_checkpoint
    from kitsseg.network.vbnet import VBNet
    from kitsseg.planning import FINE
    from tests.test_predictor import paper_plans

    plans = paper_plans()
    state = VBNet(plans.stage(FINE).network).state_dict()
    if damage == "missing":
        del state["head.weight"]
    else:
        state["head.weight"] = torch.zeros(1, 1, 1, 1, 1)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "plans": plans.to_dict(), "stage": FINE, "epoch": 1}, path)
    with pytest.raises(KitssegError, match="weights do not match"):
        network_from_checkpoint(path)
