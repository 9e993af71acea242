"""Run under torchrun by test_training.py: train 2 iterations with DDP, then save this rank's weights."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from kitsseg.paths import DatasetPaths
from kitsseg.training.trainer import TrainConfig, Trainer

root, out = Path(sys.argv[1]), Path(sys.argv[2])
config = TrainConfig(stage="3d_coarse", fold="0", epochs=1, iters_per_epoch=2, val_iters=1, device="cpu",
                     num_workers=0, augment_strength=0.0)
trainer = Trainer(DatasetPaths(root, "Phantom"), config, quiet=True)
trainer._train_epoch()
# parameters (BatchNorm running statistics are per rank; DDP broadcasts rank 0's at every forward)
torch.save({k: v.detach() for k, v in trainer.model.named_parameters()}, out / f"rank{dist.get_rank()}.pt")
trainer.dist.close()
