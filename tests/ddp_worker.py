"""Run under torchrun by test_training.py: train with DDP, then save this rank's weights and step count.

`ddp_worker.py ROOT OUT` trains 2 iterations. `ddp_worker.py ROOT OUT time-budget` trains one long epoch
under a 1.2 s budget while rank 1's clock runs an hour ahead: the ranks must still stop together.
"""
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from kitsseg.paths import DatasetPaths
from kitsseg.training.trainer import TrainConfig, Trainer

root, out = Path(sys.argv[1]), Path(sys.argv[2])
budget = len(sys.argv) > 3 and sys.argv[3] == "time-budget"
config = TrainConfig(stage="3d_coarse", fold="0", epochs=1, iters_per_epoch=100_000 if budget else 2, val_iters=1,
                     device="cpu", num_workers=0, augment_strength=0.0, time_budget_min=0.02 if budget else 0.0)
trainer = Trainer(DatasetPaths(root, "Phantom"), config, quiet=True)
trainer.started = time.perf_counter()
if budget and dist.get_rank() == 1:
    trainer._elapsed = lambda: time.perf_counter() - trainer.started + 3600.0
trainer._train_epoch()
steps = int(next(iter(trainer.optimizer.state.values()))["step"])
# parameters (BatchNorm running statistics are per rank; DDP broadcasts rank 0's at every forward)
torch.save({**{k: v.detach() for k, v in trainer.model.named_parameters()}, "steps": torch.tensor(steps)},
           out / f"rank{dist.get_rank()}.pt")
trainer.dist.close()
