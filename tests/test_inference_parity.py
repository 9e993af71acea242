"""The faster cascade gives the labels the cascade gave before it (#19): the oracle cascade on
real KiTS label geometry, compared with fingerprints (voxels per label, sha256 of the label
array) that the earlier code produced on the same inputs (459250e; 75d7ff9's inference code is
the same). case_00151 (1059 slices, too slow for a unit test) was checked once the same way:
identical sha256 (61b303ac...), 233 s -> 28 s with the oracles, niced under load."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from kitsseg.inference.predictor import Predictor
from kitsseg.memory import GB, MemoryBudget
from kitsseg.planning import FINE
from tests.test_predictor import coarse_oracle, encoded_image, fine_oracle, paper_plans

BEFORE = {  # computed with 459250e's kitsseg (np.take resampling, half-overlap 96^3 tiles)
    "kits19/case_00004": ([16656809, 115665, 4742, 0],
                          "88ea45c50fa0a3499f7c4964278c255288fb72948ebdc2ee20aeb1486d1bd0f5"),
    "kits23-cysts/case_00006": ([40914651, 232831, 7113, 2013],
                                "8da54f0e954b2c482d0715165b24fa7ae02aff06897a4bb9cd94711cc2fd325a"),
}


def fingerprint(labels: sitk.Image) -> tuple[list[int], str]:
    array = sitk.GetArrayFromImage(labels)
    return np.bincount(array.ravel(), minlength=4).tolist(), hashlib.sha256(array.tobytes()).hexdigest()


def oracle_labels(shared_data, relative: str, memory: MemoryBudget | None = None) -> tuple[sitk.Image, list]:
    """The oracle cascade's label map, and the input shapes of the fine 'network' passes."""
    plans = paper_plans()
    fine, calls = fine_oracle(plans.stage(FINE).num_classes), []

    def counted(x):
        calls.append(tuple(x.shape[2:]))
        return fine(x)

    seg = sitk.ReadImage(str(shared_data / relative / "segmentation.nii.gz"))
    return Predictor(plans, [coarse_oracle], [counted], memory=memory).predict(encoded_image(seg)), calls


@pytest.mark.parametrize("relative", sorted(BEFORE))
def test_labels_are_those_of_the_earlier_code(shared_data, relative):
    labels, _ = oracle_labels(shared_data, relative)
    assert fingerprint(labels) == BEFORE[relative]


def test_labels_are_those_of_the_earlier_code_when_memory_splits_the_vois_into_tiles(shared_data):
    labels, calls = oracle_labels(shared_data, "kits19/case_00004", MemoryBudget(0.9 * GB))
    assert len(calls) > 2, calls  # two VOIs, more passes: tiles
    assert fingerprint(labels) == BEFORE["kits19/case_00004"]
