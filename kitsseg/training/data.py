"""Batches for training: crops from the in-memory stage arrays, augmented in background processes."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from kitsseg.training.augmentation import build_augmentation, sample_size
from kitsseg.training.lesion_paste import LesionPaste
from kitsseg.training.sampling import CachedVolume, CropSampler


class CropLoader:
    """Infinite iterator of {'data': (B, 1, *patch) float32, 'seg': (B, 1, *patch) int16} batches.

    Each worker (thread id) draws from its own generator seeded by (seed, thread id), so a
    single-process loader with a given seed always yields the same batches.
    """

    def __init__(self, volumes: list[CachedVolume], sampler: CropSampler, size: Sequence[int],
                 batch_size: int, merge_foreground: bool, seed: int, paste: LesionPaste | None = None,
                 paste_margin: Sequence[int] = (0, 0, 0)):
        self.volumes, self.sampler, self.size = volumes, sampler, tuple(size)
        self.batch_size, self.merge_foreground, self.seed = batch_size, merge_foreground, seed
        self.paste, self.paste_margin = paste, tuple(paste_margin)
        self.rng = np.random.default_rng([seed, 0])

    def set_thread_id(self, thread_id: int) -> None:
        self.rng = np.random.default_rng([self.seed, thread_id])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        images, labels = [], []
        for _ in range(self.batch_size):
            image, label = self.sampler.sample(self.volumes, self.size, self.rng)
            image = image.astype(np.float32)
            if self.paste is not None:
                self.paste(image, label, self.paste_margin, self.rng)
            images.append(image)
            labels.append((label > 0) if self.merge_foreground else label)
        return {"data": np.stack(images)[:, None], "seg": np.stack(labels)[:, None].astype(np.int16)}


def make_batches(volumes: list[CachedVolume], sampler: CropSampler, patch_size: Sequence[int], batch_size: int,
                 merge_foreground: bool, seed: int, augment_strength: float, num_workers: int,
                 paste: LesionPaste | None = None):
    """An iterator of augmented training batches (augmentation off when strength is 0), with
    lesions pasted into crops by `paste` before augmentation."""
    augment = augment_strength > 0
    size = sample_size(patch_size, augment)
    margin = [(s - p) // 2 for s, p in zip(size, patch_size)]  # what the spatial transform crops away
    loader = CropLoader(volumes, sampler, size, batch_size, merge_foreground, seed, paste, margin)
    transform = build_augmentation(patch_size, sampler.pad_value, augment_strength) if augment else None
    if num_workers <= 0:
        # batchgenerators' transforms draw from numpy's global generator, its noise from Python's
        np.random.seed(seed % 2**32)
        random.seed(seed)
        return SingleThreadedAugmenter(loader, transform)
    seeds = [int(np.random.default_rng([seed, w]).integers(2**31)) for w in range(num_workers)]
    return MultiThreadedAugmenter(loader, transform, num_workers, num_cached_per_queue=2, seeds=seeds)
