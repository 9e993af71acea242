"""Pictures: training curves (progress.png) and segmentation overlays."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from scipy import ndimage as ndi

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

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


LABEL_COLOURS = {1: ("kidney", "#2ca02c"), 2: ("tumour", "#d62728"), 3: ("cyst", "#1f77b4")}
REFERENCE_COLOURS = {1: "#ffd700", 2: "#ff00ff", 3: "#00e5ff"}  # yellow, magenta, cyan; dashed
REFERENCE_STYLE = "dashed"


def _kidney_centres(seg: np.ndarray, ref: np.ndarray | None) -> list[tuple[int, int, int]]:
    """Centre voxel of each of the (up to two) largest kidney components of the prediction, else the reference."""
    mask = seg > 0 if seg.any() or ref is None else ref > 0
    if not mask.any():
        return [tuple(n // 2 for n in seg.shape)]
    components, count = ndi.label(mask)
    sizes = ndi.sum_labels(mask, components, index=np.arange(1, count + 1))
    largest = np.argsort(-sizes)[:2] + 1
    return [tuple(int(round(c)) for c in ndi.center_of_mass(components == k)) for k in largest]


def _draw(ax, image, seg, ref, aspect, title):
    ax.imshow(np.clip(image, -200, 500), cmap="gray", aspect=aspect, origin="upper")
    for value, (_, colour) in LABEL_COLOURS.items():
        if (seg == value).any():
            ax.contour(seg == value, levels=[0.5], colors=[colour], linewidths=1.2)
        if ref is not None and (ref == value).any():
            ax.contour(ref == value, levels=[0.5], colors=[REFERENCE_COLOURS[value]], linewidths=1.2,
                       linestyles=REFERENCE_STYLE)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def overlay_png(image_hu: np.ndarray, seg: np.ndarray, spacing_mm, path: Path, ref: np.ndarray | None = None,
                title: str = "") -> None:
    """Axial and coronal slices through each kidney (canonical arrays), with label contours:
    prediction solid (green, red, blue), reference dashed (yellow, magenta, cyan)."""
    centres = _kidney_centres(seg, ref)
    fig, axes = plt.subplots(len(centres), 2, figsize=(10, 5 * len(centres)), squeeze=False)
    for row, (z, y, x) in enumerate(centres):
        axial = np.s_[z]
        _draw(axes[row, 0], image_hu[axial], seg[axial], None if ref is None else ref[axial], spacing_mm[1] / spacing_mm[2],
              f"axial z={z}")
        coronal = np.s_[::-1, y, :]  # superior at the top
        _draw(axes[row, 1], image_hu[coronal], seg[coronal], None if ref is None else ref[coronal], spacing_mm[0] / spacing_mm[2],
              f"coronal y={y}")
    handles = [Line2D([], [], color=c, label=f"{n} (prediction)") for n, c in LABEL_COLOURS.values()]
    if ref is not None:
        handles += [Line2D([], [], color=REFERENCE_COLOURS[v], linestyle=REFERENCE_STYLE, label=f"{n} (reference)")
                    for v, (n, _) in LABEL_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
