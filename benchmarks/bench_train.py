"""Training speed: iterations per second of each stage's VB-Net, and the data loader's batches per second.

Uses a preprocessed dataset (`--data-root/-d`, e.g. the one bench_preprocess.py builds from
rendered KiTS19 cases) or, by default, makes a phantom dataset with the paper's preset. Batches,
loss and loader workers are the plans' recipe, as `kits_train STAGE FOLD` runs with no flags; the step runs
in channels_last_3d with the trainer's mixed precision (float16 on CUDA, bfloat16 on CPUs that run it
natively), and peak GPU memory is reported on CUDA.

    python benchmarks/bench_train.py [--data-root ROOT -d NAME] [--device cpu|cuda] [--seconds 60]
                                     [--batch-size B] [--num-workers N] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_description  # noqa: E402

from kitsseg.device import autocast_dtype, resolve_device  # noqa: E402
from kitsseg.network.vbnet import parameter_megabytes  # noqa: E402
from kitsseg.paths import DatasetPaths  # noqa: E402
from kitsseg.planning import STAGES, load_plans  # noqa: E402
from kitsseg.training.data import make_batches  # noqa: E402
from kitsseg.training.sampling import CropSampler, load_stage_volumes  # noqa: E402
from kitsseg.training.trainer import (TrainConfig, _to_tensors, build_loss, build_network,  # noqa: E402
                                     build_optimizer)


def _phantom_dataset(workdir: Path) -> DatasetPaths:
    from dataset_conversion.phantom import PhantomConfig, write_phantom_dataset
    from kitsseg.plan_and_preprocess import plan_and_preprocess

    paths = DatasetPaths(workdir, "Phantom")
    write_phantom_dataset(paths.raw, 8, config=PhantomConfig(shape=(96, 192, 192)), quiet=True)
    plan_and_preprocess(paths, num_workers=2, quiet=True)
    return paths


def _loader_rate(batches, seconds: float) -> float:
    next(batches)  # start-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(batches)
        count += 1
    return count / (time.perf_counter() - start)


def _step_rate(stage, config: TrainConfig, batches, device: torch.device, seconds: float) -> tuple[float, float]:
    network = build_network(stage, device).train()
    optimizer = build_optimizer(network, config)
    loss_fn = build_loss(config)
    dtype = autocast_dtype(device, config.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    batch = _to_tensors(next(batches), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    count, start = -1, 0.0
    while count < 0 or time.perf_counter() - start < seconds:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(network(batch[0]), batch[1])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if count < 0:  # the first step warms up (allocator, cuDNN autotuning)
            start = time.perf_counter()
        count += 1
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
    return count / (time.perf_counter() - start), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("-d", "--dataset", default="KiTS19")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time per stage and per rate")
    parser.add_argument("--batch-size", type=int, help="override the plans' batch size (e.g. 2 on a CPU)")
    parser.add_argument("--num-workers", type=int, help="loader workers (default: the plans' recipe, as kits_train)")
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line at the end")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = DatasetPaths(args.data_root, args.dataset) if args.data_root else _phantom_dataset(Path(tmp))
        plans = load_plans(paths.plans)
        case_ids = sorted(p.stem for p in paths.stage_dir(STAGES[0]).glob("*.json"))
        print(f"Training speed on {device} ({machine_description()}), dataset {paths.name}, "
              f"{len(case_ids)} cases, torch {torch.__version__}")
        print(f"{'stage':<10} {'patch':<14} {'batch':>5} {'MB':>5} {'it/s':>7} {'s/it':>7} "
              f"{'loader batches/s':>17} {'loader/step':>12} {'peak GPU GB':>12}")
        rows = []
        for name in STAGES:
            stage = plans.stage(name)
            config = TrainConfig.from_plans(paths, name, "0")  # the recipe kits_train runs with no flags
            batch_size, workers = args.batch_size or stage.batch_size, args.num_workers
            workers = config.num_workers if workers is None else workers
            volumes = load_stage_volumes(paths.stage_dir(name), case_ids)
            sampler = CropSampler.for_stage(stage, plans.intensity.padding_value, config)
            batches = make_batches(volumes, sampler, stage.patch_size, batch_size, stage.merges_foreground,
                                   seed=0, augment_strength=config.augment_strength, num_workers=workers)
            loader = _loader_rate(batches, args.seconds)
            steps, peak = _step_rate(stage, config, batches, device, args.seconds)
            if hasattr(batches, "_finish"):
                batches._finish()
            megabytes = parameter_megabytes(build_network(stage, torch.device("cpu")))
            patch = "x".join(map(str, stage.patch_size))
            print(f"{name:<10} {patch:<14} {batch_size:>5} {megabytes:5.1f} "
                  f"{steps:7.3f} {1 / steps:7.2f} {loader:17.2f} {loader / steps:11.1f}x {peak:12.2f}  ({workers} workers)")
            rows.append({"stage": name, "patch": patch, "batch_size": batch_size, "num_workers": workers,
                         "steps_per_s": steps, "loader_per_s": loader})
        if args.json:
            print(json.dumps(rows))

if __name__ == "__main__":
    main()
