"""Dataset fingerprint: spacings, shapes, label volumes, kidney sizes, foreground HU statistics.

Cases are read one at a time per worker, so memory stays at about the largest case
per worker; foreground intensities are subsampled (seeded) before pooling.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kitsseg.atomic import write_json
from kitsseg.dataset import DatasetInfo, RawCase, list_cases, load_case
from kitsseg.kidneys import kidney_boxes
from kitsseg.label_stats import label_histogram
from kitsseg.parallel import map_cases

SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class Fingerprint:
    """What planning needs to know about a dataset (JSON: see `to_dict`)."""

    cases: dict[str, dict]
    median_spacing_mm: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    foreground_intensity: dict[str, float]
    kidney_size_mm: dict[str, list[float]]
    label_values: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"cases": self.cases, "median_spacing_mm": list(self.median_spacing_mm),
                "median_shape": list(self.median_shape),
                "foreground_intensity": self.foreground_intensity,
                "kidney_size_mm": self.kidney_size_mm, "label_values": list(self.label_values)}

    @classmethod
    def from_dict(cls, data: dict) -> "Fingerprint":
        return cls(data["cases"], tuple(data["median_spacing_mm"]), tuple(data["median_shape"]),
                   data["foreground_intensity"], data["kidney_size_mm"], tuple(data["label_values"]))


def case_fingerprint(case: RawCase, info: DatasetInfo, seed: int) -> tuple[dict, np.ndarray]:
    """Per-case entry and a seeded sample of foreground intensities."""
    image, label, props = load_case(case, info)
    voxel_ml = float(np.prod(props.spacing_mm)) / 1000.0
    counts = label_histogram(label)
    foreground = label > 0
    boxes = kidney_boxes(foreground, props.spacing_mm)
    kidneys_mm = [[(b.stop - b.start) * s for b, s in zip(box, props.spacing_mm)] for box in boxes]
    values = image[foreground]
    rng = np.random.default_rng([seed, int.from_bytes(case.case_id.encode()[-8:], "little")])
    sample = rng.choice(values, size=min(SAMPLES_PER_CASE, values.size), replace=False) if values.size else values
    entry = {
        "spacing_mm": list(props.spacing_mm), "shape": list(props.shape),
        "orientation": props.orientation, "properties": props.to_dict(),
        "voxels_per_label": {str(v): int(counts[v]) for v in sorted(info.label_values)},
        "volume_ml_per_label": {str(v): round(float(counts[v]) * voxel_ml, 3) for v in sorted(info.label_values)},
        "kidney_boxes_mm": [[round(x, 2) for x in k] for k in kidneys_mm],
    }
    return entry, sample.astype(np.float32)


def _intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {k: 0.0 for k in ("mean", "std", "min", "max", "percentile_00_5", "percentile_99_5")}
    return {"mean": float(samples.mean()), "std": float(samples.std()), "min": float(samples.min()),
            "max": float(samples.max()), "percentile_00_5": float(np.percentile(samples, 0.5)),
            "percentile_99_5": float(np.percentile(samples, 99.5))}


def extract_fingerprint(raw_dir: Path, num_workers: int = 1, seed: int = 0,
                        quiet: bool = False) -> Fingerprint:
    """Fingerprint every case of a raw dataset (stops with the first bad case's error)."""
    info, cases = list_cases(raw_dir)
    results = map_cases(partial(case_fingerprint, info=info, seed=seed), cases, num_workers,
                        desc="fingerprint", quiet=quiet, stop_on_error=True)
    entries = {case.case_id: results[case.case_id][0] for case in cases}
    samples = np.concatenate([results[case.case_id][1] for case in cases])
    kidney_sizes = np.array([k for e in entries.values() for k in e["kidney_boxes_mm"]]).reshape(-1, 3)
    found = {int(v) for e in entries.values() for v, n in e["voxels_per_label"].items() if n > 0}
    return Fingerprint(
        cases=entries,
        median_spacing_mm=tuple(float(v) for v in np.median([e["spacing_mm"] for e in entries.values()], axis=0)),
        median_shape=tuple(int(v) for v in np.median([e["shape"] for e in entries.values()], axis=0)),
        foreground_intensity=_intensity_statistics(samples),
        kidney_size_mm={"median": np.median(kidney_sizes, axis=0).round(2).tolist() if len(kidney_sizes) else [0, 0, 0],
                        "percentile_95": np.percentile(kidney_sizes, 95, axis=0).round(2).tolist()
                        if len(kidney_sizes) else [0, 0, 0]},
        label_values=tuple(sorted(found | {0})),
    )


def save_fingerprint(fingerprint: Fingerprint, path: Path) -> None:
    write_json(fingerprint.to_dict(), path)
