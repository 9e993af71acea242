"""benchmarks/crop_centre_classes.py: component sizes per voxel and the sampler's centre labels."""
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from crop_centre_classes import centre_counts, component_volumes_ml  # noqa: E402

from kitsseg.training.sampling import CropSampler, cached_volume  # noqa: E402


def _label(tumour_voxels: int, cyst_voxels: int) -> np.ndarray:
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[2:18, 2:18, 2:18] = 1
    label[3, 3, 3:3 + tumour_voxels] = 2
    label[10, 10, 3:3 + cyst_voxels] = 3
    return label


def test_component_volumes_are_per_label_component():
    label = _label(tumour_voxels=4, cyst_voxels=2)
    label[15, 15, 15] = 2  # a second, one-voxel tumour component
    sizes = component_volumes_ml(label, voxel_ml=0.5)
    assert sizes[3, 3, 3] == 2.0 and sizes[15, 15, 15] == 0.5 and sizes[10, 10, 3] == 1.0
    assert sizes[5, 5, 5] == 0.0 and sizes[0, 0, 0] == 0.0


def test_lesion_centres_split_by_volume_then_voxel():
    """Lesion fraction 1: a VOI holding only tumour and one holding tumour + 3x as much cyst give
    tumour 1/2 + 1/2 * 1/4 = 0.625 of the centres."""
    rng = np.random.default_rng(0)
    volumes = [cached_volume("a", np.zeros((20, 20, 20), np.float32), _label(4, 0), None, rng),
               cached_volume("b", np.zeros((20, 20, 20), np.float32), _label(4, 12), None, rng)]
    sampler = CropSampler(True, -1.0, lesion_fraction=1.0)
    counts = centre_counts(sampler, volumes, voxel_ml=1.0, crops=4000, seed=0, small_ml=5.0)
    assert counts["kidney"] == 0 and counts["tumour"] + counts["cyst"] == 4000
    assert abs(counts["tumour"] / 4000 - 0.625) < 0.03
    assert counts["small tumour"] == counts["tumour"]  # 4 ml components
    assert counts["small cyst"] == 0  # a 12 ml component
