"""dataset.json labels -> the cascade's classes: one place that reads label names and values.

The fine stage learns contiguous class indices: 0 background, 1 the organ (the class each
VOI is about: "kidney" when the dataset has it, else the foreground label with the lowest
value), then the lesions inside it (every other foreground label, by value). Preprocessing
maps label-file values to class indices and prediction maps them back, so KiTS datasets
(kidney 1, tumor 2, cyst 3) keep their values and any other label set works the same way.

Labels as nnU-Net v2 writes them are accepted: names in any case, and region-based labels
(`"kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2`), where each value in the label files is
named after the smallest region that holds it (KiTS23: 1 kidney, 2 tumor, 3 masses -> cyst).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kitsseg.errors import KitssegError

ORGAN = "kidney"
SYNONYMS = {"tumour": "tumor", "masses": "cyst", "cysts": "cyst"}  # KiTS23's masses minus tumour are cysts
MAX_LABEL_VALUE = 255  # label maps are held as uint8
EXPECTED = ('expected {"background": 0, "kidney": 1, ...} with integer values 1-255, '
            'or nnU-Net region labels such as {"kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}')


@dataclass(frozen=True)
class ClassMap:
    """Fine-stage classes: `names[i]` is stored as `label_values[i]` in the dataset's label files."""

    names: tuple[str, ...]
    label_values: tuple[int, ...]

    @property
    def organ(self) -> str:
        return self.names[1]

    @property
    def lesions(self) -> tuple[str, ...]:
        return self.names[2:]

    def to_dict(self) -> dict:
        return {"names": list(self.names), "label_values": list(self.label_values),
                "organ": self.organ, "lesions": list(self.lesions)}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        return cls(tuple(str(n) for n in data["names"]), tuple(int(v) for v in data["label_values"]))

    def to_class_indices(self, labels: np.ndarray) -> np.ndarray:
        """Label-file values -> class indices (uint8); values not listed become background.

        >>> ClassMap(("background", "liver", "tumor"), (0, 1, 2)).to_class_indices(np.array([0, 2, 1])).tolist()
        [0, 2, 1]
        >>> ClassMap(("background", "kidney", "cyst"), (0, 1, 3)).to_class_indices(np.array([3, 1, 0])).tolist()
        [2, 1, 0]
        """
        lookup = np.zeros(MAX_LABEL_VALUE + 1, np.uint8)
        lookup[list(self.label_values)] = np.arange(len(self.names), dtype=np.uint8)
        return lookup[labels]

    def to_label_values(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> label-file values (uint8).

        >>> ClassMap(("background", "kidney", "cyst"), (0, 1, 3)).to_label_values(np.array([2, 1, 0])).tolist()
        [3, 1, 0]
        """
        return np.asarray(self.label_values, np.uint8)[classes]

    @property
    def is_identity(self) -> bool:
        return self.label_values == tuple(range(len(self.names)))


def _canonical_name(name: str) -> str:
    lowered = name.strip().lower()
    return SYNONYMS.get(lowered, lowered)


def _region_members(value, source: str) -> tuple[int, ...]:
    members = value if isinstance(value, list) else [value]
    if not members or not all(isinstance(v, int) and not isinstance(v, bool) for v in members):
        raise KitssegError(f"{source}: label value {value!r} is not an integer or a list of integers; {EXPECTED}")
    return tuple(members)


def _names_by_value(labels: dict, source: str) -> dict[int, str]:
    """Each foreground value of the label files and its name (the smallest region holding it)."""
    regions = {_canonical_name(n): _region_members(v, source) for n, v in labels.items()
               if _canonical_name(n) != "background"}
    names: dict[int, str] = {}
    for value in sorted({v for members in regions.values() for v in members}):
        holding = sorted((len(m), n) for n, m in regions.items() if value in m)
        if len(holding) > 1 and holding[0][0] == holding[1][0]:
            raise KitssegError(f"{source}: label value {value} belongs to regions {holding[0][1]!r} and "
                               f"{holding[1][1]!r} of equal size; {EXPECTED}")
        names[value] = holding[0][1]
    return names


def class_map_from_labels(labels: dict, source: str = "dataset.json") -> ClassMap:
    """The cascade's classes for a dataset.json `labels` entry; one clear line when unsupported."""
    canonical = [_canonical_name(n) for n in labels] if isinstance(labels, dict) else []
    if dict(zip(canonical, labels.values() if canonical else [])).get("background") != 0:
        raise KitssegError(f"{source}: 'labels' needs background = 0; {EXPECTED}")
    if len(set(canonical)) < len(canonical):
        raise KitssegError(f"{source}: label names {sorted(labels)} repeat a name (case and spelling aside); "
                           f"{EXPECTED}")
    names = _names_by_value(labels, source)
    if not names:
        raise KitssegError(f"{source}: no foreground label; {EXPECTED}")
    bad = [v for v in names if not 1 <= v <= MAX_LABEL_VALUE]
    if bad:
        raise KitssegError(f"{source}: label value(s) {bad} outside 1-{MAX_LABEL_VALUE}; {EXPECTED}")
    if len(set(names.values())) < len(names):
        raise KitssegError(f"{source}: regions {sorted(labels)} do not name each label value once; {EXPECTED}")
    by_name = {n: v for v, n in names.items()}
    organ = ORGAN if ORGAN in by_name else names[min(names)]
    lesions = [n for v, n in sorted(names.items()) if n != organ]
    ordered = ("background", organ, *lesions)
    return ClassMap(ordered, tuple(0 if n == "background" else by_name[n] for n in ordered))


def label_file_values(labels: dict) -> set[int]:
    """Every value that may appear in the label files (background included)."""
    return {v for value in labels.values() for v in (value if isinstance(value, list) else [value])}
