"""benchmarks/tune_lesion_weight.py: every weight decides from one set of network passes."""
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from tune_lesion_weight import score_weights  # noqa: E402

from kitsseg.inference.predictor import Predictor  # noqa: E402
from tests.test_predictor import LEVEL_HU, coarse_oracle, decode, paper_plans  # noqa: E402


def test_weights_decide_from_one_pass_per_stage(tmp_path):
    """A tumour block that a fine 'network' gives (background, kidney, tumour) = (0.05, 0.65, 0.30):
    weight 1 calls it kidney (tumour Dice 0), weight 3 tumour (Dice 1); the networks run once."""
    hu = np.full((40, 40, 40), -LEVEL_HU, np.int16)
    hu[12:28, 14:26, 14:26] = 0
    label = np.where(hu == 0, 2, 0).astype(np.uint8)
    for folder, name, array in (("images", "case_00000_0000.nii.gz", hu), ("labels", "case_00000.nii.gz", label)):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(tmp_path / folder / name))
    calls = []

    def fine(x):
        calls.append("fine")
        inside = (decode(x) > 0.5).float()
        return torch.log(inside * torch.tensor([0.05, 0.65, 0.30]).view(1, 3, 1, 1, 1)
                         + (1 - inside) * torch.tensor([0.98, 0.01, 0.01]).view(1, 3, 1, 1, 1))

    def coarse(x):
        calls.append("coarse")
        return coarse_oracle(x)

    images = [tmp_path / "images" / "case_00000_0000.nii.gz"]
    score_weights(Predictor(paper_plans(cysts=False), [coarse], [fine]), images, tmp_path / "labels", (1.0,))
    one_weight, calls[:] = list(calls), []
    rows = score_weights(Predictor(paper_plans(cysts=False), [coarse], [fine]), images, tmp_path / "labels", (1.0, 3.0))
    assert [(r["case"], r["weight"]) for r in rows] == [("case_00000", 1.0), ("case_00000", 3.0)]
    assert rows[0]["tumor_dice"] == 0.0 and rows[1]["tumor_dice"] > 0.95
    assert rows[0]["kidney_dice"] == rows[1]["kidney_dice"] > 0.95
    assert calls == one_weight and one_weight.count("coarse") == 1  # the second weight ran no network
