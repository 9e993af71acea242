"""Left and right kidney volumes (summary.csv) from a canonical label map.

Canonical arrays are LPS: x (axis 2) points to the patient's left. Voxels of the kidney
region (label > 0: kidney, tumour and cyst) right of the body's midline count for the right
kidney, the others for the left. The midline is the median x of the body (voxels above
`BODY_HU`), else the scan's centre; the cascade takes it on its coarse image, where it also
cuts a kidney component spanning both sides (`CascadeResult.midline_x`, `inference.voi`).
"""
from __future__ import annotations

import numpy as np

BODY_HU = -500.0


def body_midline_x(image_hu: np.ndarray) -> float:
    """The body's midline along canonical x, in voxel-edge units (0 = the scan's first edge): the
    median x of the body's voxels (the body is often off the scan's centre; the median ignores an
    arm or the table better than the body's extent would).

    >>> image = np.full((2, 2, 40), -1000.0); image[..., 8:24] = 40.0  # the body covers x = 8..23
    >>> body_midline_x(image), body_midline_x(np.full((2, 2, 40), -1000.0))
    (16.0, 20.0)
    """
    xs = np.nonzero(image_hu > BODY_HU)[2]
    return float(np.median(xs + 0.5)) if len(xs) else image_hu.shape[2] / 2


def side_volumes_ml(labels: np.ndarray, spacing_mm, midline_x: float) -> dict[str, float]:
    """{'right_kidney_ml', 'left_kidney_ml'}: kidney-region volumes on each side of `midline_x`.

    >>> labels = np.zeros((1, 1, 6), np.uint8); labels[0, 0, [0, 1, 4]] = [1, 2, 3]
    >>> side_volumes_ml(labels, (10.0, 10.0, 10.0), 3.0)
    {'right_kidney_ml': 2.0, 'left_kidney_ml': 1.0}
    """
    per_x = np.count_nonzero(labels, axis=(0, 1))
    centres = np.arange(labels.shape[2]) + 0.5
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    right = int(per_x[centres < midline_x].sum())
    return {"right_kidney_ml": round(right * voxel_ml, 2),
            "left_kidney_ml": round((int(per_x.sum()) - right) * voxel_ml, 2)}
