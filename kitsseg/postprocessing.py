"""From fine probabilities to label maps: the class decision, then the connected components of a
VOI that the coarse stage found.

The decision is an argmax with the lesion classes' (tumour, cyst) probabilities multiplied by
`lesion_weight` (kidney and background: 1). The default, 1, is the plain argmax: a weight of 3
raised tumour Dice on the KiTS19 validation split (0.439 -> 0.473) but lowered it on the test
split (benchmarks/RESULTS.md, recipe-log entry 18), so above 1 it is opt-in, for more tumour recall.

The component with the most voxels inside the coarse kidney mask is the kidney the coarse stage
found and always stays; so does every other component with at least `MIN_SUPPORTED_SHARE` of its
voxels inside the mask: a tumour lobe detached from its kidney, or a second kidney sharing the
VOI, lies in the coarse kidney region. Other components go: an under-trained fine net can label a
false region in a neighbouring organ, larger than the kidney and touching the coarse mask's
blurred 6 mm edge, and neither "the largest" nor "any voxel in the mask" would drop it. When no
component touches the mask (or there is no mask) the largest one is kept, the lowest label among
equal sizes.

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

MIN_SUPPORTED_SHARE = 0.5  # of a component's voxels inside the coarse kidney mask, to keep it beside the kidney
LESION_WEIGHT = 1.0  # lesion probabilities' factor in the class decision: the plain argmax (entry 18)
KIDNEY_CLASS, FIRST_LESION_CLASS = 1, 2  # class indices: 0 background, 1 kidney, 2... lesions (kitsseg.labels)


@dataclass(frozen=True)
class PostprocessConfig:
    keep_largest_kidney_component: bool = True
    lesion_weight: float = LESION_WEIGHT

    def __post_init__(self):
        if not self.lesion_weight > 0:
            raise KitssegError(f"lesion weight {self.lesion_weight}: must be above 0")

    @classmethod
    def load(cls, path: Path) -> "PostprocessConfig":
        """The decision cross-validation wrote, or the default when there is none (files without a
        lesion weight get the default's)."""
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(keep_largest_kidney_component=bool(data["keep_largest_kidney_component"]),
                       lesion_weight=float(data.get("lesion_weight", LESION_WEIGHT)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KitssegError(f"{path}: invalid postprocessing file ({exc})") from None

    def to_dict(self) -> dict:
        return asdict(self)


def class_weight(class_index: int, config: PostprocessConfig) -> float:
    """The factor of a class's probability in the decision: `lesion_weight` for lesions, else 1."""
    return config.lesion_weight if class_index >= FIRST_LESION_CLASS else 1.0


def decide_classes(probabilities: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """uint8 class indices from (C, ...) probabilities: argmax with the lesion classes weighted.

    >>> decide_classes(np.array([[0.5, 0.6], [0.3, 0.3], [0.2, 0.1]]), PostprocessConfig(lesion_weight=3)).tolist()
    [2, 0]
    >>> decide_classes(np.array([[0.5, 0.6], [0.3, 0.3], [0.2, 0.1]]), PostprocessConfig()).tolist()
    [0, 0]
    """
    weights = np.array([class_weight(c, config) for c in range(len(probabilities))], np.float32)
    return (probabilities * weights.reshape(-1, *[1] * (probabilities.ndim - 1))).argmax(0).astype(np.uint8)


def keep_kidney_component(labels: np.ndarray, support: np.ndarray | None = None) -> np.ndarray:
    """Zero every connected (26-neighbour) component of `labels > 0` but the one with the most voxels in
    `support` (the coarse stage's kidney mask on the same grid) and those with `MIN_SUPPORTED_SHARE` of
    their voxels in it; when none touches it, keep only the largest.

    >>> keep_kidney_component(np.array([[[1, 2, 0, 1, 0, 1, 0, 1, 1, 1]]]),
    ...                       support=np.array([[[0, 1, 0, 0, 0, 1, 0, 1, 0, 0]]])).tolist()
    [[[1, 2, 0, 0, 0, 1, 0, 0, 0, 0]]]
    >>> keep_kidney_component(np.array([[[1, 2, 0, 1]]])).tolist()
    [[[1, 2, 0, 0]]]
    """
    components, count = ndi.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = -1
    inside = np.zeros(count + 1, np.int64)
    if support is not None:
        inside = np.bincount(components[support.astype(bool)], minlength=count + 1)
        inside[0] = 0
    kept = inside >= MIN_SUPPORTED_SHARE * sizes
    kept[0] = False
    kept[int(np.argmax(inside if inside.any() else sizes))] = True  # argmax: the lowest label among equals
    return np.where(kept[components], labels, 0).astype(labels.dtype)


def postprocess(labels: np.ndarray, config: PostprocessConfig, support: np.ndarray | None = None) -> np.ndarray:
    """Apply the configured postprocessing to one VOI's labels (`support`: the coarse kidney mask there)."""
    return keep_kidney_component(labels, support) if config.keep_largest_kidney_component else labels
