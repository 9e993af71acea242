"""kits_train: one stage, one fold. A TrainConfig, builders, and a short fit loop.

Output: ROOT/results/NAME/STAGE/fold_K/{checkpoint_latest.pt, checkpoint_best.pt,
checkpoint_final.pt, training_log.csv, progress.png, train_config.json, validation_summary.json}.
Checkpoints are written atomically at the end of every epoch; `resume=True` restores the
model, optimizer, epoch, random state and log, and seeds each epoch from (seed, epoch), so a
resumed single-process run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import csv
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kitsseg.atomic import atomic_path, remove_leftovers, write_json
from kitsseg.checkpoint import load_checkpoint, save_checkpoint
from kitsseg.device import autocast_dtype, precision_name, resolve_device
from kitsseg.errors import KitssegError
from kitsseg.network.vbnet import VBNet
from kitsseg.paths import DatasetPaths
from kitsseg.planning import Plans, StagePlan, TrainingRecipe, load_plans
from kitsseg.training.data import make_batches
from kitsseg.training.distributed import Distributed
from kitsseg.training.lesion_paste import LesionPaste
from kitsseg.training.loss import DeepSupervisionLoss, SegmentationLoss
from kitsseg.training.sampling import CropSampler, load_stage_volumes
from kitsseg.training.splits import load_or_create_splits
from kitsseg.training.validation import validate_stage
from kitsseg.visualization import plot_progress

EMA_WEIGHT = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the stage's recipe (plans.json, see `TrainingRecipe`) with the command's overrides."""

    stage: str
    fold: str
    epochs: int = TrainingRecipe.epochs
    iters_per_epoch: int = TrainingRecipe.iters_per_epoch
    val_iters: int = TrainingRecipe.val_iters
    lr: float = TrainingRecipe.lr
    weight_decay: float = 1e-5
    loss: str = TrainingRecipe.loss
    device: str = "auto"
    precision: str = "auto"  # kitsseg.device.autocast_dtype: mixed precision where the device runs it natively
    num_workers: int = TrainingRecipe.num_workers
    seed: int = 0
    augment_strength: float = TrainingRecipe.augment_strength
    lesion_fraction: float = TrainingRecipe.lesion_fraction
    outside_fraction: float = TrainingRecipe.outside_fraction
    voi_jitter_mm: tuple[float, float, float] = TrainingRecipe.voi_jitter_mm
    lesion_paste_fraction: float = TrainingRecipe.lesion_paste_fraction
    grad_clip: float = 12.0
    time_budget_min: float = TrainingRecipe.time_budget_min  # > 0: stop (and schedule the lr) by wall clock
    overrides: tuple[str, ...] = ()  # fields the command line set instead of the plans' recipe

    @classmethod
    def from_plans(cls, paths: DatasetPaths, stage: str, fold: str, **overrides) -> "TrainConfig":
        """The recipe `plans.json` holds for `stage`, with `overrides` (flags given on the command line)."""
        recipe = asdict(load_plans(paths.plans).stage(stage).training)
        flags = tuple(sorted(k for k in overrides if k in recipe))
        return cls(stage=stage, fold=fold, overrides=flags, **{**recipe, **overrides})


# what a resumed run must share with its checkpoint (workers, device and validation may differ)
RESUME_FIELDS = ("epochs", "iters_per_epoch", "lr", "weight_decay", "loss", "seed", "augment_strength",
                 "lesion_fraction", "outside_fraction", "voi_jitter_mm", "lesion_paste_fraction", "grad_clip",
                 "time_budget_min")


def recipe_difference(saved: dict, config: TrainConfig) -> str | None:
    """'lr 0.003 (checkpoint) vs 0.001 (this run)' for the first field that differs, else None."""
    current = asdict(config)
    for name in RESUME_FIELDS:
        if name in saved and saved[name] != current[name]:
            return f"{name} {saved[name]!r} (checkpoint) vs {current[name]!r} (this run)"
    return None


def poly_lr(base_lr: float, progress: float, exponent: float = 0.9) -> float:
    """Polynomial decay from `base_lr` at progress 0 to 0 at progress 1."""
    return base_lr * (1.0 - min(max(progress, 0.0), 1.0)) ** exponent


def pace_estimate(config: TrainConfig, epochs_done: int, epoch_seconds: float) -> str:
    """One line after a session's first epoch: what the rest takes at its pace or, for a run cut by
    the clock, how many iterations the budget buys (the benchmarks' tables give the iterations their
    figures came from; a slower machine gets fewer in the same minutes).

    >>> pace_estimate(TrainConfig("3d_fine", "all", iters_per_epoch=100, time_budget_min=38.25), 1, 108.0)
    'one epoch takes about 108 s; training stops after 38.25 min: about 2100 iterations at this pace'
    >>> pace_estimate(TrainConfig("3d_fine", "0", epochs=100), 1, 90.0)
    'one epoch takes about 90 s: about 2.5 h for the remaining 99 epochs'
    """
    if config.time_budget_min > 0:
        iterations = 60 * config.time_budget_min / epoch_seconds * config.iters_per_epoch
        return (f"one epoch takes about {epoch_seconds:.0f} s; training stops after {config.time_budget_min:g} min: "
                f"about {round(iterations, -2):.0f} iterations at this pace")
    remaining = config.epochs - epochs_done
    return (f"one epoch takes about {epoch_seconds:.0f} s: about {remaining * epoch_seconds / 3600:.1f} h "
            f"for the remaining {remaining} epochs")


def fold_cases(splits: list[dict], fold: str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) ids; fold 'all' trains on every case and validates on them too."""
    if fold == "all":
        return sorted(case_ids), sorted(case_ids)
    k = int(fold)
    if not 0 <= k < len(splits):
        raise KitssegError(f"fold {fold} does not exist (splits_final.json has {len(splits)} folds)")
    return splits[k]["train"], splits[k]["val"]


def build_network(stage: StagePlan, device: torch.device) -> nn.Module:
    """A VB-Net in channels_last_3d (oneDNN's and cuDNN's fast layout for 3D convolutions)."""
    return VBNet(stage.network).to(device, memory_format=torch.channels_last_3d)


def build_optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_loss(config: TrainConfig) -> nn.Module:
    """The recipe's loss; a deep-supervised network's list of logits is scored level by level."""
    return DeepSupervisionLoss(SegmentationLoss(config.loss))


def output_dir(paths: DatasetPaths, stage: str, fold: str) -> Path:
    return paths.results / stage / f"fold_{fold}"


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0] % 2**31)


def _dice_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """(C-1, 3) true positives, false positives, false negatives per foreground class."""
    predicted = logits.argmax(1)
    counts = []
    for c in range(1, num_classes):
        p, g = predicted == c, labels == c
        counts.append([(p & g).sum().item(), (p & ~g).sum().item(), (~p & g).sum().item()])
    return np.array(counts, dtype=np.float64)


def _dice(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts.T
    return np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)


def _to_tensors(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.as_tensor(batch["data"], dtype=torch.float32).to(device, non_blocking=True)
    labels = torch.as_tensor(batch["seg"][:, 0].astype(np.int64)).to(device, non_blocking=True)
    return image.contiguous(memory_format=torch.channels_last_3d), labels


class Trainer:
    """Holds the run's state; `fit()` is the loop."""

    def __init__(self, paths: DatasetPaths, config: TrainConfig, resume: bool = False, quiet: bool = False):
        self.config, self.quiet = config, quiet
        self.dist = Distributed.from_environment(config.device)
        self.device = self.dist.device if self.dist.enabled else resolve_device(config.device)
        self.plans: Plans = load_plans(paths.plans)
        self.stage: StagePlan = self.plans.stage(config.stage)
        self.out = output_dir(paths, config.stage, config.fold)
        self.out.mkdir(parents=True, exist_ok=True)
        info_ids = sorted(p.stem for p in paths.stage_dir(config.stage).glob("*.json"))
        splits = load_or_create_splits(paths.splits, info_ids)
        train_ids, val_ids = fold_cases(splits, config.fold, info_ids)
        stage_dir = paths.stage_dir(config.stage)
        self.train_volumes = load_stage_volumes(stage_dir, train_ids, config.seed)
        self.val_volumes = load_stage_volumes(stage_dir, val_ids, config.seed)
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
        self.network = self.dist.wrap(build_network(self.stage, self.device))
        self.optimizer = build_optimizer(self.network, config)
        self.loss = build_loss(config)
        self.autocast = autocast_dtype(self.device, config.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        self.sampler = CropSampler.for_stage(self.stage, self.plans.intensity.padding_value, config)
        paste_fraction = 0.0 if self.stage.merges_foreground else config.lesion_paste_fraction  # fine stage only
        self.paste = LesionPaste.from_volumes(self.train_volumes, paste_fraction, self.stage.spacing_mm)
        self.epoch, self.log, self.ema, self.best = 0, [], None, None
        self.batches = None  # the training loader's worker processes, started by the first epoch
        self.seconds_before = 0.0  # training time of earlier sessions (time budget)
        if self.dist.is_main:
            remove_leftovers(self.out)  # partial checkpoints of a killed run
        if resume:
            self._resume(self.out / "checkpoint_latest.pt")
        if self.dist.is_main:
            write_json({**asdict(config), "precision_used": precision_name(self.autocast)},
                       self.out / "train_config.json")

    def _mixed_precision(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    # ---- state ------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.network.module if hasattr(self.network, "module") else self.network

    def _state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "plans": self.plans.to_dict(), "stage": self.stage.name,
                "fold": self.config.fold, "epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "log": self.log,
                "ema": self.ema, "best": self.best, "train_config": asdict(self.config),
                "seconds": self.seconds_before + self._elapsed()}

    def _resume(self, path: Path) -> None:
        """Continue from `path`; a run killed before its first checkpoint starts afresh (as nnU-Net does)."""
        if not path.exists():
            warnings.warn(f"{path}: no checkpoint to continue from, starting a new training")
            return
        state = load_checkpoint(path, self.device)
        if state["stage"] != self.stage.name:
            raise KitssegError(f"{path}: checkpoint is for stage {state['stage']}, not {self.stage.name}")
        difference = recipe_difference(state.get("train_config", {}), self.config)
        if difference:
            raise KitssegError(f"{path}: cannot continue with another recipe: {difference}; "
                               "run with the checkpoint's settings, or without --continue to start afresh")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.log, self.ema, self.best = state["epoch"], state["log"], state["ema"], state["best"]
        self.seconds_before = float(state.get("seconds", 0.0))

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    # ---- schedule ---------------------------------------------------------------------------
    def _progress(self, iteration: int) -> float:
        cfg = self.config
        by_steps = (self.epoch + iteration / cfg.iters_per_epoch) / cfg.epochs
        if cfg.time_budget_min > 0:  # rank 0's clock on every rank: they stop at the same step, with one lr
            return self.dist.from_rank_zero((self.seconds_before + self._elapsed()) / (60 * cfg.time_budget_min))
        return by_steps

    def _done(self) -> bool:
        if self.config.time_budget_min > 0:
            return self._progress(0) >= 1.0
        return self.epoch >= self.config.epochs

    # ---- loop -------------------------------------------------------------------------------
    def _epoch_batches(self):
        """In-process batches are rebuilt and reseeded each epoch (a resumed run repeats an
        uninterrupted one exactly); worker processes start once per run and stay."""
        cfg = self.config
        if cfg.num_workers > 0 and self.batches is not None:
            return self.batches
        batches = make_batches(self.train_volumes, self.sampler, self.stage.patch_size, self.stage.batch_size,
                               self.stage.merges_foreground, seed=_epoch_seed(cfg.seed, self.dist.rank, self.epoch),
                               augment_strength=cfg.augment_strength, num_workers=cfg.num_workers,
                               paste=self.paste)
        if cfg.num_workers > 0:
            self.batches = batches
        return batches

    def _train_epoch(self) -> float:
        cfg = self.config
        torch.manual_seed(_epoch_seed(cfg.seed, self.dist.rank, self.epoch))
        batches = self._epoch_batches()
        self.network.train()
        losses = []
        bar = tqdm(range(cfg.iters_per_epoch), desc=f"{self.stage.name} fold {cfg.fold} epoch {self.epoch}",
                   disable=self.quiet or not self.dist.is_main, leave=False)
        for iteration in bar:
            progress = self._progress(iteration)
            if cfg.time_budget_min > 0 and progress >= 1.0 and losses:
                break  # the budget ends mid-epoch
            for group in self.optimizer.param_groups:
                group["lr"] = poly_lr(cfg.lr, progress)
            image, labels = _to_tensors(next(batches), self.device)
            with self._mixed_precision():
                loss = self.loss(self.network(image), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return float(np.mean(losses))

    @torch.no_grad()
    def _validate_epoch(self) -> tuple[float, np.ndarray]:
        cfg = self.config
        batches = make_batches(self.val_volumes, self.sampler, self.stage.patch_size, self.stage.batch_size,
                               self.stage.merges_foreground, seed=cfg.seed + 7919, augment_strength=0.0,
                               num_workers=0)
        self.network.eval()
        losses, counts = [], np.zeros((self.stage.num_classes - 1, 3))
        for _ in range(cfg.val_iters):
            image, labels = _to_tensors(next(batches), self.device)
            with self._mixed_precision():
                logits = self.network(image)
            losses.append(self.loss(logits, labels).item())
            counts += _dice_counts(logits, labels, self.stage.num_classes)
        return float(np.mean(losses)) if losses else float("nan"), _dice(counts)

    def _end_epoch(self, train_loss: float, val_loss: float, dice: np.ndarray, seconds: float) -> None:
        row = {"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss}
        row.update({f"val_dice_{n}": float(d) for n, d in zip(self.stage.class_names[1:], dice)})
        row.update({"lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds})
        self.log.append(row)
        mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
        self.ema = mean_dice if self.ema is None else EMA_WEIGHT * self.ema + (1 - EMA_WEIGHT) * mean_dice
        self.epoch += 1
        if not self.dist.is_main:
            return
        improved = self.best is None or self.ema > self.best
        if improved:
            self.best = self.ema
        state = self._state()
        save_checkpoint(state, self.out / "checkpoint_latest.pt")
        if improved:
            save_checkpoint(state, self.out / "checkpoint_best.pt")
        self._write_log()

    def _write_log(self) -> None:
        with atomic_path(self.out / "training_log.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.log[0]))
                writer.writeheader()
                writer.writerows(self.log)
        plot_progress(self.log, self.out / "progress.png")

    def fit(self) -> Path:
        """Train until the epochs (or the time budget) are spent; return the output folder."""
        self.started = time.perf_counter()
        first_epoch = self.epoch
        try:
            while not self._done():
                start = time.perf_counter()
                train_loss = self._train_epoch()
                val_loss, dice = self._validate_epoch()
                self._end_epoch(train_loss, val_loss, dice, time.perf_counter() - start)
                if not self.quiet and self.dist.is_main:
                    row = self.log[-1]
                    tqdm.write(f"epoch {row['epoch']}: train {train_loss:.4f}  val {val_loss:.4f}  "
                               f"dice {np.round(dice, 3).tolist()}  {row['seconds']:.0f} s")
                    if row["epoch"] == first_epoch:
                        tqdm.write(pace_estimate(self.config, self.epoch, row["seconds"]))
        finally:
            if hasattr(self.batches, "_finish"):
                self.batches._finish()
        if self.dist.is_main:
            save_checkpoint(self._state(), self.out / "checkpoint_final.pt")
            summary = validate_stage(self.model, self.stage, self.val_volumes, self.device,
                                     self.plans.intensity.padding_value, self.config.precision, quiet=self.quiet)
            write_json(summary, self.out / "validation_summary.json")
        self.dist.close()
        return self.out


def train(paths: DatasetPaths, config: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    return Trainer(paths, config, resume, quiet).fit()
