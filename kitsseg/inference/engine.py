"""What the cascade asks of an inference engine (PyTorch or ONNX Runtime), without importing either.

An engine turns a stage's models into one function over numpy arrays: a `(1, 1, z, y, x)`
float32 input to `(1, C, z, y, x)` float32 class probabilities, averaged over the models
(folds) and, with test-time augmentation, over the mirrorings. The sliding window and the
cascade only see that function, so the numpy side never imports torch.

>>> mirrorings(False), len(mirrorings(True))
([()], 8)
>>> softmax(np.zeros((1, 2, 1, 1, 1), np.float32))[0, :, 0, 0, 0].tolist()
[0.5, 0.5]
"""
from __future__ import annotations

import itertools
from typing import Callable, Protocol, Sequence

import numpy as np

ArrayFn = Callable[[np.ndarray], np.ndarray]
SPATIAL_AXES = (2, 3, 4)


class Engine(Protocol):
    name: str
    precision: str  # of the passes, as kitsseg_run.json records it: 'float32', 'mixed bfloat16', ...

    def ensemble(self, models: Sequence, tta: bool) -> ArrayFn:
        """One function from an input batch to probabilities averaged over `models` (and mirrorings)."""

    def free_device_bytes(self) -> int | None:
        """Free accelerator memory that bounds a pass, or None when passes are planned against host memory."""


def mirrorings(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip for each test-time mirroring: none without TTA, all 8 with it."""
    if not tta:
        return [()]
    return [axes for n in range(4) for axes in itertools.combinations(SPATIAL_AXES, n)]


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax over the class axis, float32."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted.astype(np.float32, copy=False)
