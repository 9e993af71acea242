"""nnU-Net v2 trainer variant used by bench_accuracy.py: train for a wall-clock budget.

`bench_accuracy.py` copies this file into the installed nnunetv2 package (nnU-Net finds
trainers by class name inside its own package, for training and for prediction). The
budget comes from KITSSEG_BENCH_BUDGET_MIN; everything else is nnU-Net's default trainer,
except that epochs are shorter (KITSSEG_BENCH_ITERS_PER_EPOCH, default 25 training and 5
validation iterations), that the budget can end an epoch early, that the learning rate
follows nnU-Net's polynomial schedule over the clock instead of over 1000 epochs, and that
the validation pass after training is skipped (the benchmark scores held-out cases).
"""
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_TimeBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_seconds = float(os.environ.get("KITSSEG_BENCH_BUDGET_MIN", "45")) * 60
        self.num_iterations_per_epoch = int(os.environ.get("KITSSEG_BENCH_ITERS_PER_EPOCH", "25"))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.num_epochs = 10 ** 6
        self.budget_started = None

    def _progress(self) -> float:
        return (time.perf_counter() - self.budget_started) / self.budget_seconds

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * (1 - min(self._progress(), 1.0)) ** 0.9

    def run_training(self):
        self.on_train_start()
        self.budget_started = time.perf_counter()
        while self._progress() < 1.0:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                self._set_lr()
                outputs.append(self.train_step(next(self.dataloader_train)))
                if self._progress() >= 1.0:
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.print_to_log_file(f"time budget spent: {self.current_epoch} epochs")
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Skipped: the benchmark scores the held-out test cases instead (with fold 'all' nnU-Net
        would predict every training case here, which is not part of either method's budget)."""
        self.print_to_log_file("validation skipped (bench_accuracy.py scores held-out cases)")
