"""Plans: one typed, frozen object (JSON on disk) that says how every stage is preprocessed and trained.

`plan_experiment(fingerprint, preset)` fills the preset's choices (spacings, crop sizes,
intensity window, network, training recipe) with what the dataset fingerprint and the
machine imply (patch sizes shrunk to the data, VOI margin, batch size from a GPU memory
budget, loader workers from the cores, classes from the labels).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from kitsseg.atomic import write_json
from kitsseg.errors import KitssegError
from kitsseg.fingerprint import Fingerprint
from kitsseg.labels import ClassMap, class_map_from_labels

PLANS_VERSION = 1
PREPROCESSING_VERSION = 3  # raise when the same plans make other preprocessed arrays: caches are rebuilt
COARSE, FINE = "3d_coarse", "3d_fine"
STAGES = (COARSE, FINE)
DEFAULT_PRESET = Path(__file__).resolve().parent.parent / "plans" / "vbnet_paper.json"
CPU_PRESET = DEFAULT_PRESET.parent / "cpu.json"
MAX_LOADER_WORKERS = 12
DEFAULT_GPU_MEMORY_GB = 8.0
INFERENCE_CONTEXT_MM = 0.0  # fine VOIs at inference: real image per side beyond the stride fill (see Predictor)
# the longest plausible kidney region per axis, as a multiple of the fingerprint's 95th percentile (the longest of
# 60 kidneys in each of the KiTS19 and KiTS23 benchmark fingerprints: 1.06-1.38x their 95th percentile)
KIDNEY_EXTENT_FACTOR = 1.5
# a VOI keeps its labels only with this share of the median kidney box's volume in kidney tissue, unless no VOI of
# the scan has it (KiTS23 benchmark: 20 ml; the least of 477 real kidney sides in ../shared/data holds 43 ml)
VOI_KIDNEY_FRACTION = 0.025
LEGACY_STAGE_KEYS = {"min_cut_voi_kidney_ml": "min_voi_kidney_ml"}  # plans of 2dab420-3255ec8


@dataclass(frozen=True)
class IntensityConfig:
    """CT normalisation: 'window' clips to window_hu and scales to [-1, 1]; 'percentile'
    clips to window_hu (the foreground 0.5/99.5 percentiles) and z-scores with mean/std."""

    scheme: str = "window"
    window_hu: tuple[float, float] = (-200.0, 500.0)
    mean: float = 0.0
    std: float = 1.0

    @property
    def padding_value(self) -> float:
        """What air (any HU at or below the window's low end) normalises to: the one value
        used wherever an image is padded (fine cache, crops, augmentation, inference).

        >>> IntensityConfig().padding_value
        -1.0
        >>> IntensityConfig("percentile", (-100.0, 300.0), 100.0, 50.0).padding_value
        -4.0
        """
        if self.scheme == "window":
            return -1.0
        return float((self.window_hu[0] - self.mean) / self.std)


@dataclass(frozen=True)
class NetworkConfig:
    """VB-Net topology: a stem conv, down blocks (stride-2 conv + residual units), up blocks
    (transposed conv + skip concatenation + residual units), 1x1x1 head. Residual units
    with at least `bottleneck_min_channels` channels are bottlenecks (C -> C/4 -> C). With
    `deep_supervision_levels` L > 0 the L up blocks above the last also get a 1x1x1 head, whose
    logits (at 1/2, 1/4, ... resolution) join the training loss; inference uses the last head only."""

    in_channels: int = 1
    num_classes: int = 2
    stem_channels: int = 16
    down_channels: tuple[int, ...] = (32, 64, 128, 256)
    down_blocks: tuple[int, ...] = (1, 2, 3, 3)
    up_channels: tuple[int, ...] = (256, 128, 64, 32)
    up_blocks: tuple[int, ...] = (3, 3, 2, 1)
    bottleneck_min_channels: int = 64
    deep_supervision_levels: int = 0

    @property
    def stride(self) -> int:
        return 2 ** len(self.down_channels)


@dataclass(frozen=True)
class TrainingRecipe:
    """How a stage is trained: kits_train's defaults (flags override them, recorded in train_config.json).

    AdamW with polynomial learning-rate decay (exponent 0.9) over `epochs` x `iters_per_epoch`
    iterations, or over `time_budget_min` minutes of wall clock when that is above 0. A fine crop's
    centre class is drawn first: a lesion (tumour, cyst) with `lesion_fraction`, background inside
    the VOI with `outside_fraction`, kidney otherwise; each face of the VOI is moved at random by
    up to `voi_jitter_mm` (planned: one coarse voxel, the coarse stage's typical error). A share
    `lesion_paste_fraction` of the crops that hold kidney get a training case's lesion pasted in,
    rescaled to 1-30 ml (`kitsseg.training.lesion_paste`).
    """

    loss: str = "gdice_ce"
    lr: float = 3e-3
    epochs: int = 100
    iters_per_epoch: int = 250
    val_iters: int = 20
    time_budget_min: float = 0.0
    lesion_fraction: float = 0.33
    outside_fraction: float = 0.0
    voi_jitter_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lesion_paste_fraction: float = 0.0
    augment_strength: float = 1.0
    num_workers: int = 2


@dataclass(frozen=True)
class StagePlan:
    """Everything one stage needs: grid, crop, batch, classes, network, and (fine) VOI margin."""

    name: str
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    class_names: tuple[str, ...]
    network: NetworkConfig
    voi_margin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    training: TrainingRecipe = TrainingRecipe()
    inference_context_mm: float = 0.0  # fine: real image the VOI is grown by, per side, before the fine pass
    # fine: the longest plausible kidney region per axis; a coarse piece is cut to it (0: no limit)
    max_kidney_extent_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    min_voi_kidney_ml: float = 0.0  # fine: kidney tissue a VOI must hold to stay, when another VOI holds it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def context_mm(self) -> tuple[float, float, float]:
        """Fine stage: real image cached around each kidney's box, half a patch per side (at least the
        VOI margin), so a crop centred anywhere in the kidney holds real anatomy, not padding.

        >>> StagePlan(FINE, (1.5, 1.5, 1.5), (64, 64, 48), 2, ("b", "k"), NetworkConfig(), (12.0, 12.0, 40.0)).context_mm
        (48.0, 48.0, 40.0)
        """
        if self.name != FINE:
            return (0.0, 0.0, 0.0)
        return tuple(max(p * s / 2, m) for p, s, m in zip(self.patch_size, self.spacing_mm, self.voi_margin_mm))

    @property
    def merges_foreground(self) -> bool:
        """The coarse stage learns one class: the kidney region (label > 0)."""
        return self.name == COARSE


@dataclass(frozen=True)
class Plans:
    """`labels` as dataset.json gives them; `classes` the fine stage's classes (organ, lesions) and
    the label-file value of each (plans written before `classes` existed derive them from `labels`)."""

    version: int
    dataset_name: str
    labels: dict[str, int | list[int]]
    intensity: IntensityConfig
    stages: dict[str, StagePlan] = field(default_factory=dict)
    classes: ClassMap | None = None

    def __post_init__(self):
        if self.classes is None:
            object.__setattr__(self, "classes", class_map_from_labels(self.labels, "plans"))

    def to_dict(self) -> dict:
        data = asdict(self)
        for stage in data["stages"].values():
            stage["num_classes"] = len(stage["class_names"])
        data["classes"] = self.classes.to_dict()
        return _lists(data)

    @classmethod
    def from_dict(cls, data: dict, source: str = "plans") -> "Plans":
        try:
            if data.get("version") != PLANS_VERSION:
                raise ValueError(f"version {data.get('version')!r} (expected {PLANS_VERSION})")
            stages = {}
            for name, stage in data["stages"].items():
                stage = {LEGACY_STAGE_KEYS.get(k, k): v for k, v in stage.items() if k != "num_classes"}
                stages[name] = _build(StagePlan, {**stage, "network": _build(NetworkConfig, stage["network"]),
                                                  "training": _build(TrainingRecipe, stage.get("training", {}))})
            classes = ClassMap.from_dict(data["classes"]) if "classes" in data else None
            return cls(PLANS_VERSION, str(data["dataset_name"]), dict(data["labels"]),
                       _build(IntensityConfig, data["intensity"]), stages, classes)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise KitssegError(f"{source}: invalid plans ({type(exc).__name__}: {exc})") from None

    def stage(self, name: str) -> StagePlan:
        if name not in self.stages:
            raise KitssegError(f"plans have no stage {name!r} (have: {', '.join(self.stages)})")
        return self.stages[name]

    def stage_hash(self, name: str) -> str:
        """Hash of what determines a stage's preprocessed data (for idempotent reruns)."""
        stage = self.stage(name)
        key = {"intensity": asdict(self.intensity), "spacing_mm": stage.spacing_mm,
               "voi_margin_mm": stage.voi_margin_mm, "context_mm": stage.context_mm, "labels": self.labels,
               "stage": name,
               "preprocessing_version": PREPROCESSING_VERSION}
        return hashlib.sha256(json.dumps(_lists(key), sort_keys=True).encode()).hexdigest()[:16]


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "tuple": (list, tuple), "dict": (dict,)}


def _build(cls, data: dict):
    """Build a frozen dataclass from JSON data, checking keys and types, lists becoming tuples."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        expected = _JSON_TYPES.get(str(known[name].type).split("[")[0].split(" ")[0])
        if expected and (not isinstance(value, expected) or isinstance(value, bool)):
            raise TypeError(f"{cls.__name__}.{name} must be a {str(known[name].type)}, got {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def load_plans(path: Path) -> Plans:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KitssegError(f"{path}: plans not found (run kits_plan_and_preprocess --steps plan)") from None
    except json.JSONDecodeError as exc:
        raise KitssegError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise KitssegError(f"{path}: invalid plans (expected a JSON object)")
    return Plans.from_dict(data, str(path))


def save_plans(plans: Plans, path: Path) -> None:
    write_json(plans.to_dict(), path)


def load_preset(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KitssegError(f"{path}: cannot read preset ({exc})") from None


def estimate_activation_bytes(network: NetworkConfig, patch_size) -> int:
    """Training memory of one sample's stored activations (half precision: CUDA training uses AMP).

    Counts about three tensors per conv (conv, norm, activation) at each resolution;
    a bottleneck unit stores two C/4-channel convs and one C-channel conv. Checked on an
    H100 (benchmarks/bench_train.py): 96^3 paper VB-Net 0.76 GB per sample measured vs
    0.90 estimated; 80^3 0.45 vs 0.52.
    """
    voxels = float(np.prod(patch_size))
    per_voxel = 3 * network.stem_channels

    def unit_floats(channels: int) -> float:
        if channels >= network.bottleneck_min_channels:
            return 3 * (channels / 4) * 2 + 3 * channels
        return 3 * channels * 2

    for level, (channels, blocks) in enumerate(zip(network.down_channels, network.down_blocks), 1):
        per_voxel += (3 * channels + blocks * unit_floats(channels)) / 8 ** level
    levels = range(len(network.up_channels) - 1, -1, -1)
    for level, channels, blocks in zip(levels, network.up_channels, network.up_blocks):
        per_voxel += (3 * channels / 2 + channels + blocks * unit_floats(channels)) / 8 ** level
    per_voxel += 2 * network.num_classes
    return int(voxels * per_voxel * 2)


def batch_size_for_budget(network: NetworkConfig, patch_size, gpu_memory_gb: float) -> int:
    """Largest batch (2 to 32) whose activations fit the budget, after ~1 GB of overhead."""
    available = (gpu_memory_gb - 1.0) * 1024 ** 3
    return int(np.clip(available // estimate_activation_bytes(network, patch_size), 2, 32))


def _shrink_patch(preset_patch, extent_voxels, stride: int) -> tuple[int, int, int]:
    """Preset patch, shrunk per axis to the smallest multiple of `stride` covering the extent."""
    return tuple(int(min(p, max(stride, int(np.ceil(e / stride)) * stride)))
                 for p, e in zip(preset_patch, extent_voxels))


def voi_margin_mm(kidney_median_mm, coarse_spacing_mm) -> tuple[float, float, float]:
    """Margin around a kidney box: two coarse voxels (the coarse stage's localisation error),
    or a tenth of a median kidney where that is larger."""
    return tuple(float(np.ceil(max(2 * c, 0.1 * k))) for k, c in zip(kidney_median_mm, coarse_spacing_mm))


def loader_workers(cpu_count: int | None = None) -> int:
    """Augmentation processes for training: one per core, at most MAX_LOADER_WORKERS."""
    return int(min(cpu_count or os.cpu_count() or 1, MAX_LOADER_WORKERS))


def plan_experiment(fingerprint: Fingerprint, dataset_name: str, labels: dict, preset: dict,
                    normalization: str | None = None, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
                    num_workers: int | None = None) -> Plans:
    """Plans for a dataset from its fingerprint and a preset (see plans/README.md)."""
    intensity = _build(IntensityConfig, preset.get("intensity", {}))
    scheme = normalization or intensity.scheme
    if scheme == "percentile":
        fg = fingerprint.foreground_intensity
        intensity = IntensityConfig("percentile", (fg["percentile_00_5"], fg["percentile_99_5"]),
                                    fg["mean"], max(fg["std"], 1e-3))
    elif scheme != "window":
        raise KitssegError(f"unknown normalization {scheme!r} (use window or percentile)")

    stage_presets = preset.get("stages", {})
    coarse_spacing = tuple(float(v) for v in stage_presets.get(COARSE, {}).get("spacing_mm", (6, 6, 6)))
    margin = voi_margin_mm(fingerprint.kidney_size_mm["median"], coarse_spacing)
    max_kidney_extent = tuple(round(KIDNEY_EXTENT_FACTOR * float(v), 2)
                              for v in fingerprint.kidney_size_mm["percentile_95"])
    median_kidney_box_ml = float(np.prod(fingerprint.kidney_size_mm["median"])) / 1000
    classes = class_map_from_labels(labels)
    extents_mm = {
        COARSE: np.asarray(fingerprint.median_shape) * np.asarray(fingerprint.median_spacing_mm),
        FINE: np.asarray(fingerprint.kidney_size_mm["median"]) + 2 * np.asarray(margin),
    }
    stages = {}
    for name in STAGES:
        stage_preset = stage_presets.get(name, {})
        class_names = ("background", f"{classes.organ}_region") if name == COARSE else classes.names
        network = _build(NetworkConfig, {**stage_preset.get("network", {}), "num_classes": len(class_names)})
        spacing = tuple(float(v) for v in stage_preset.get("spacing_mm", (6, 6, 6) if name == COARSE else (1, 1, 1)))
        patch = _shrink_patch(stage_preset.get("patch_size", (96, 96, 96)),
                              extents_mm[name] / np.asarray(spacing), network.stride)
        batch = stage_preset.get("batch_size") or batch_size_for_budget(network, patch, gpu_memory_gb)
        planned = {"num_workers": num_workers or loader_workers()}
        if name == FINE:
            planned["voi_jitter_mm"] = coarse_spacing
        recipe = _build(TrainingRecipe, {**planned, **stage_preset.get("training", {})})
        fine_only = {} if name != FINE else {
            "voi_margin_mm": margin, "max_kidney_extent_mm": max_kidney_extent,
            "inference_context_mm": float(stage_preset.get("inference_context_mm", INFERENCE_CONTEXT_MM)),
            "min_voi_kidney_ml": round(VOI_KIDNEY_FRACTION * median_kidney_box_ml, 2)}
        stages[name] = StagePlan(name, spacing, patch, int(batch), class_names, network, training=recipe, **fine_only)
    return Plans(PLANS_VERSION, dataset_name, dict(labels), intensity, stages, classes)

