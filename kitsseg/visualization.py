"""Pictures: training curves (progress.png)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kitsseg.atomic import atomic_path  # noqa: E402


def plot_progress(log: list[dict], path: Path) -> None:
    """Losses, validation Dice per class and the learning rate against the epoch."""
    epochs = [row["epoch"] for row in log]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    ax_loss.plot(epochs, [r["train_loss"] for r in log], label="train loss", color="tab:blue")
    ax_loss.plot(epochs, [r["val_loss"] for r in log], label="val loss", color="tab:red")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    for key in [k for k in log[0] if k.startswith("val_dice_")]:
        ax_dice.plot(epochs, [r[key] for r in log], linestyle="--", label=key.replace("val_", ""))
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    more = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    ax_lr.plot(epochs, [r["lr"] for r in log], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
