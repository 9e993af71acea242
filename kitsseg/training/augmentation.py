"""Augmentation for training batches, built from batchgenerators transforms.

Rotation and scaling (one spatial transform that also crops the enlarged sample
back to the patch), mirroring, gamma, brightness and contrast, Gaussian noise and blur.
`strength` scales the probabilities (0 turns augmentation off).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

SAMPLE_ENLARGEMENT = 1.25  # rotations pull in voxels from outside the patch


def sample_size(patch_size: Sequence[int], augment: bool) -> tuple[int, ...]:
    """Size of the crop drawn before augmentation (enlarged so rotations see real data)."""
    if not augment:
        return tuple(int(p) for p in patch_size)
    return tuple(int(np.ceil(p * SAMPLE_ENLARGEMENT / 2) * 2) for p in patch_size)


def build_augmentation(patch_size: Sequence[int], pad_value: float, strength: float = 1.0) -> Compose:
    """The transforms; rotations and scaling fill with `pad_value` (the plans' `intensity.padding_value`)."""
    p = float(np.clip(strength, 0.0, 1.0))
    angle = np.deg2rad(15) * max(strength, 0.0)
    return Compose([
        SpatialTransform(tuple(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=(-angle, angle), angle_y=(-angle, angle), angle_z=(-angle, angle),
                         p_rot_per_sample=0.2 * p, do_scale=True, scale=(0.85, 1.25), p_scale_per_sample=0.2 * p,
                         border_mode_data="constant", border_cval_data=pad_value, order_data=1,
                         border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False),
        GaussianNoiseTransform(noise_variance=(0, 0.005), p_per_sample=0.1 * p),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2 * p,
                              p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15 * p),
        ContrastAugmentationTransform(p_per_sample=0.15 * p),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.1 * p),
        MirrorTransform(axes=(0, 1, 2)),
    ])
