"""Plots from a run: the tutorial's picture of predicted digits, and the training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitlab.fileio import atomic_path

MISTAKE_COLOUR = "#c62828"
RIGHT_COLOUR = "#1b5e20"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def plot_predictions(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted: Sequence[int],
    path: Path,
    label_names: Sequence[str],
    first_index: int = 0,
    confidences: Sequence[float] | None = None,
) -> Path:
    """A grid of digits titled with the prediction; mistakes in red with the true label."""
    plt = _pyplot()
    count = len(images)
    columns = min(10, max(count, 1))
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.9 * rows), squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position >= count:
            continue
        axis.imshow(images[position], cmap="gray_r")
        right = predicted[position] == true_labels[position]
        title = f"#{first_index + position}\npred {label_names[predicted[position]]}"
        if confidences is not None:
            title += f" {confidences[position]:.0%}"
        if not right:
            title += f"\ntrue {label_names[true_labels[position]]}"
        axis.set_title(title, fontsize=8, color=RIGHT_COLOUR if right else MISTAKE_COLOUR)
    mistakes = sum(p != t for p, t in zip(predicted, true_labels, strict=True))
    figure.suptitle(
        f"test digits {first_index}-{first_index + count - 1}: "
        f"{count - mistakes} of {count} right (mistakes in red)",
        fontsize=10,
    )
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def plot_history(
    history: dict[str, list[float]], path: Path, test_accuracy: float | None = None
) -> Path:
    """Loss and accuracy per epoch (training and, if held out, validation)."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.plot(epochs, history[metric], "o-", label=f"training {metric}")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], "s--", label=f"validation {metric}")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.set_xticks(epochs)
        axis.grid(alpha=0.3)
    if test_accuracy is not None:
        accuracy_axis.axhline(
            test_accuracy, color="grey", linestyle=":", label=f"test accuracy {test_accuracy:.4f}"
        )
    for axis in (loss_axis, accuracy_axis):
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path


def save_inputs(
    digits: Sequence[np.ndarray], path: Path, scale: int = 8, columns: int = 10
) -> Path:
    """The 28x28 inputs the model saw, enlarged (nearest neighbour: pixels stay visible)."""
    from PIL import Image

    count = len(digits)
    columns = min(columns, count)
    rows = -(-count // columns)
    side, gap = 28 * scale, 4
    sheet = Image.new("L", (columns * (side + gap) - gap, rows * (side + gap) - gap), 128)
    for index, digit in enumerate(digits):
        tile = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize(
            (side, side), Image.Resampling.NEAREST
        )
        sheet.paste(tile, ((index % columns) * (side + gap), (index // columns) * (side + gap)))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return path
