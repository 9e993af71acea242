"""A command whose optional part is not installed says in one line which extra brings it."""
import subprocess
import sys

from tests.conftest import REPO

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # as if PyTorch were not installed: import torch raises ModuleNotFoundError
from kitsseg.cli import train_main
sys.exit(train_main(["3d_fine", "0", "--data-root", sys.argv[1]]))
"""


def test_kits_train_without_torch_names_the_extra(tmp_path):
    run = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: kits_train needs torch, which is not installed: pip install 'kitsseg[torch]'"
