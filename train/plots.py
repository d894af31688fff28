"""Training figures (matplotlib, Agg): loss curves, prediction grids, filters, loader samples.

Truth is drawn red, prediction green, as in the origin report. Images are (S, S) uint8 gray
crops, points (K, 2) in crop pixels.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def loss_curves(history: list[dict], path: Path) -> None:
    """Train/validation loss and validation NME per epoch."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_yscale("log"), a.legend()
    for key in sorted(k for k in history[-1] if k.startswith("nme/")):
        b.plot(ep, [h.get(key, np.nan) for h in history], label=key[4:])
    b.set_xlabel("epoch"), b.set_ylabel("validation NME (% IOD)"), b.legend()
    b.grid(alpha=0.3)
    _save(fig, path)


def prediction_grid(images: list[np.ndarray], truth: list[np.ndarray], pred: list[np.ndarray],
                    titles: list[str], path: Path, cols: int = 6) -> None:
    """Crops with true (red) and predicted (green) points."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, img, t, p, title in zip(np.ravel(axes), images, truth, pred, titles):
        ax.imshow(img, cmap="gray")
        ax.scatter(t[:, 0], t[:, 1], s=4, c="red")
        ax.scatter(p[:, 0], p[:, 1], s=4, c="lime")
        ax.set_title(title, fontsize=7)
    _save(fig, path)


def filters(weight: np.ndarray, path: Path, title: str) -> None:
    """Conv filters (O, I, k, k): the first input channel of each, as a grid."""
    w = weight[:, 0]
    n = len(w)
    cols = int(np.ceil(np.sqrt(n)))
    fig, axes = plt.subplots(cols, cols, figsize=(cols * 0.8, cols * 0.8))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, f in zip(np.ravel(axes), w):
        ax.imshow(f, cmap="gray")
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def samples(images: list[np.ndarray], points: list[np.ndarray], path: Path) -> None:
    """Augmented loader samples with their points (red)."""
    prediction_grid(images, points, [np.zeros((0, 2))] * len(images), [""] * len(images), path)
