"""Postprocessing of label maps: keep the largest connected kidney component.

Tumour and cyst voxels belong to the kidney region (label > 0), so dropping a component
drops its masses too: masses survive only inside kept kidney components.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from kitsseg.errors import KitssegError


@dataclass(frozen=True)
class PostprocessConfig:
    keep_largest_kidney_component: bool = True

    @classmethod
    def load(cls, path: Path) -> "PostprocessConfig":
        """The decision cross-validation wrote, or the default when there is none."""
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(keep_largest_kidney_component=bool(data["keep_largest_kidney_component"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise KitssegError(f"{path}: invalid postprocessing file ({exc})") from None

    def to_dict(self) -> dict:
        return asdict(self)


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Zero every connected (26-neighbour) component of `labels > 0` except the largest.

    >>> keep_largest_component(np.array([[[1, 2, 0, 1]]])).tolist()
    [[[1, 2, 0, 0]]]
    """
    components, count = ndi.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return np.where(components == np.argmax(sizes), labels, 0).astype(labels.dtype)


def postprocess(labels: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Apply the configured postprocessing to one VOI's labels."""
    return keep_largest_component(labels) if config.keep_largest_kidney_component else labels
