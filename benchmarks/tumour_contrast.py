"""How visible each tumour is: its mean intensity against the kidney tissue around it, per connected tumour.

    python benchmarks/tumour_contrast.py IMAGES_DIR LABELS_DIR

IMAGES_DIR holds CASE_0000.nii.gz (HU), LABELS_DIR CASE.nii.gz (labels 0-3). For each 26-connected tumour of at
least MIN_TUMOUR_ML: its volume, its mean HU, the mean HU of the kidney voxels within SHELL_MM of it, and the
contrast (kidney mean - tumour mean) / pooled standard deviation. A tumour whose contrast is near 0 differs from
its kidney only in texture or shape; on the rendered benchmark images (`../shared/bench/render_ct.py` draws each
tumour's mean from 45-160 HU, the kidney's from 70-240 HU) this says which misses any method could avoid.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

KIDNEY, TUMOUR = 1, 2
SHELL_MM = 6.0
MIN_TUMOUR_ML = 0.5


class TumourContrast(NamedTuple):
    volume_ml: float
    tumour_hu: float
    kidney_hu: float  # nan when no kidney voxel lies within SHELL_MM
    contrast: float  # (kidney_hu - tumour_hu) / pooled standard deviation; nan without kidney around


def tumour_contrasts(image_hu: np.ndarray, labels: np.ndarray, spacing_mm: tuple[float, float, float]
                     ) -> list[TumourContrast]:
    """Each connected tumour's contrast against the kidney within SHELL_MM, largest first."""
    components, _ = ndi.label(labels == TUMOUR, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    margin = [int(np.ceil(SHELL_MM / s)) + 1 for s in spacing_mm]
    found = []
    for index, box in enumerate(ndi.find_objects(components), start=1):
        grown = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin, labels.shape))
        tumour = components[grown] == index
        if tumour.sum() * voxel_ml < MIN_TUMOUR_ML:
            continue
        distance_mm = ndi.distance_transform_edt(~tumour, sampling=spacing_mm)
        shell = (distance_mm > 0) & (distance_mm <= SHELL_MM) & (labels[grown] == KIDNEY)
        inside, around = image_hu[grown][tumour].astype(float), image_hu[grown][shell].astype(float)
        kidney_hu = around.mean() if around.size else float("nan")
        pooled_sd = np.sqrt((inside.var() + around.var()) / 2) if around.size else float("nan")
        found.append(TumourContrast(float(tumour.sum() * voxel_ml), float(inside.mean()), float(kidney_hu),
                                    float((kidney_hu - inside.mean()) / pooled_sd)))
    return sorted(found, key=lambda t: -t.volume_ml)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder of CASE_0000.nii.gz images in HU")
    parser.add_argument("labels", type=Path, help="folder of the CASE.nii.gz label maps")
    args = parser.parse_args()
    label_files = sorted(args.labels.glob("*.nii.gz"))
    if not label_files:
        raise SystemExit(f"{args.labels}: no .nii.gz label maps")
    print("| case | tumour ml | tumour HU | kidney HU around | contrast (pooled SD) |\n|---|---|---|---|---|")
    for label_file in label_files:
        case = label_file.name.removesuffix(".nii.gz")
        image_file = args.images / f"{case}_0000.nii.gz"
        if not image_file.is_file():
            raise SystemExit(f"{image_file}: no image for {label_file.name}")
        image, label = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
        if image.GetSize() != label.GetSize():
            raise SystemExit(f"{image_file}: size {image.GetSize()} differs from its label map's {label.GetSize()}")
        for tumour in tumour_contrasts(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label),
                                       tuple(reversed(image.GetSpacing()))):
            print(f"| {case} | {tumour.volume_ml:.1f} | {tumour.tumour_hu:.0f} | {tumour.kidney_hu:.0f} | "
                  f"{tumour.contrast:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
