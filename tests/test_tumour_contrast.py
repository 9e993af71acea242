"""benchmarks/tumour_contrast.py: a tumour's contrast against the kidney around it, on a hand-built case whose
shell is found by brute force."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tumour_contrast import SHELL_MM, tumour_contrasts  # noqa: E402

SPACING_MM = (2.0, 1.0, 1.0)


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A kidney block holding an 8^3 tumour (90 +- 10 HU) and a one-voxel speck; the kidney is 150 +- 10 HU within
    SHELL_MM of the tumour (distances by brute force) and 400 HU beyond. Returns image, labels and the shell."""
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[2:22, 2:22, 2:22] = 1
    labels[8:16, 8:16, 8:16] = 2
    labels[3, 3, 3] = 2
    checker = np.where(np.indices(labels.shape).sum(0) % 2 == 0, 10.0, -10.0)
    mm = np.stack(np.indices(labels.shape), -1) * np.array(SPACING_MM)
    tumour_mm = mm[8:16, 8:16, 8:16].reshape(-1, 3)
    kidney = np.argwhere(labels == 1)
    nearest_mm = np.array([np.sqrt(((tumour_mm - mm[tuple(v)]) ** 2).sum(1)).min() for v in kidney])
    shell = np.zeros(labels.shape, bool)
    shell[tuple(kidney[nearest_mm <= SHELL_MM].T)] = True
    image = np.full(labels.shape, -100.0)
    image[labels == 1] = 400.0
    image[shell] = 150.0 + checker[shell]
    image[labels == 2] = 90.0 + checker[labels == 2]
    return image, labels, shell


def test_contrast_against_the_kidney_shell_only():
    image, labels, shell = _case()
    tumours = tumour_contrasts(image, labels, SPACING_MM)
    assert len(tumours) == 1  # the one-voxel speck (0.002 ml) is under MIN_TUMOUR_ML
    (tumour,) = tumours
    assert tumour.volume_ml == 512 * 2.0 / 1000
    assert tumour.tumour_hu == 90.0
    inside = image[8:16, 8:16, 8:16]
    around = image[shell]
    assert abs(tumour.kidney_hu - around.mean()) < 1e-9
    assert abs(tumour.kidney_hu - 150.0) < 1.0  # none of the 400 HU kidney beyond the shell counts
    expected = (around.mean() - 90.0) / np.sqrt((inside.var() + around.var()) / 2)
    assert abs(tumour.contrast - expected) < 1e-9
    assert 5.9 < tumour.contrast < 6.1  # 60 HU apart, both +- 10 HU


def test_a_tumour_without_kidney_around_has_no_contrast():
    image, labels, _ = _case()
    labels[labels == 1] = 0
    (tumour,) = tumour_contrasts(image, labels, SPACING_MM)
    assert np.isnan(tumour.kidney_hu) and np.isnan(tumour.contrast)
