"""Plots and the self-contained HTML report of a run.

Figure builders return matplotlib figures; ``save_figure`` writes one atomically and
``build_report`` embeds them as PNG data so that ``report.html`` opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab import evaluation
from digitlab.config import IMAGE_SIDE, PREDICTIONS_SHOWN
from digitlab.fileio import atomic_path, atomic_write_text

MISTAKE_COLOUR = "#c62828"
RIGHT_COLOUR = "#1b5e20"
REPORT_FILE = "report.html"
MISTAKES_SHOWN = 20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    _pyplot().close(figure)
    return path


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- figures


def digits_figure(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted: Sequence[int],
    label_names: Sequence[str],
    indices: Sequence[int],
    confidences: Sequence[float] | None = None,
    title: str | None = None,
):
    """A grid of digits titled with the prediction; mistakes in red with the true label.

    Drawn as one mosaic image with text over it: a matplotlib axes per digit took ~0.9 s for
    20 digits, most of `digitlab train`'s plotting time.
    """
    plt = _pyplot()
    count = len(images)
    columns = min(10, max(count, 1))
    rows = max(1, -(-count // columns))
    caption_band, gap = 26, 4  # pixels above each 28x28 digit, and between digits
    cell_width, cell_height = IMAGE_SIDE + gap, IMAGE_SIDE + caption_band
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.float32)
    width = 1.05 * columns  # inches; the height follows the mosaic's shape, plus the title
    figure, axis = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.45))
    for position in range(count):
        row, column = divmod(position, columns)
        top, left = row * cell_height + caption_band, column * cell_width + gap // 2
        mosaic[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE] = images[position]
        right = predicted[position] == true_labels[position]
        caption = f"#{indices[position]}\npred {label_names[predicted[position]]}"
        if confidences is not None:
            caption += f" {confidences[position]:.0%}"
        if not right:
            caption += f"\ntrue {label_names[true_labels[position]]}"
        axis.text(
            left + IMAGE_SIDE // 2,
            top - 2,
            caption,
            ha="center",
            va="bottom",
            fontsize=7,
            color=RIGHT_COLOUR if right else MISTAKE_COLOUR,
        )
    axis.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    axis.axis("off")
    mistakes = sum(p != t for p, t in zip(predicted, true_labels, strict=True))
    axis.set_title(title or f"{count - mistakes} of {count} right (mistakes in red)", fontsize=10)
    figure.tight_layout()
    return figure


def plot_predictions(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted: Sequence[int],
    path: Path,
    label_names: Sequence[str],
    first_index: int = 0,
    confidences: Sequence[float] | None = None,
) -> Path:
    """The tutorial's picture: a slice of test digits with their predictions, to a PNG."""
    count = len(images)
    mistakes = sum(p != t for p, t in zip(predicted, true_labels, strict=True))
    title = (
        f"test digits {first_index}-{first_index + count - 1}: "
        f"{count - mistakes} of {count} right (mistakes in red)"
    )
    indices = range(first_index, first_index + count)
    return save_figure(
        digits_figure(images, true_labels, predicted, label_names, indices, confidences, title),
        path,
    )


def numbers_figure(
    strips: np.ndarray,
    texts: Sequence[str],
    readings: Sequence[str],
    confidences: Sequence[float],
    indices: Sequence[int],
    title: str,
):
    """Number strips (what the reader saw), each captioned with what it read; mistakes in red
    with the true number."""
    plt = _pyplot()
    count = len(strips)
    columns = 2 if count > 4 else 1
    rows = max(1, -(-count // columns))
    caption_band, gap = 14, 8
    strip_height, strip_width = strips.shape[1:] if count else (IMAGE_SIDE, 1)
    cell_width, cell_height = strip_width + gap, strip_height + caption_band
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.float32)
    width = 4.6 * columns
    figure, axis = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.45))
    for position in range(count):
        row, column = divmod(position, columns)
        top, left = row * cell_height + caption_band, column * cell_width + gap // 2
        mosaic[top : top + strip_height, left : left + strip_width] = strips[position]
        right = readings[position] == texts[position]
        caption = f"#{indices[position]} read {readings[position] or '(nothing)'}"
        caption += f" {confidences[position]:.0%}"
        if not right:
            caption += f", true {texts[position]}"
        axis.text(left + 2, top - 1, caption, ha="left", va="bottom", fontsize=7,
                  color=RIGHT_COLOUR if right else MISTAKE_COLOUR)  # fmt: skip
    axis.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    axis.axis("off")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_readings(
    strips: np.ndarray,
    texts: Sequence[str],
    readings: Sequence[str],
    confidences: Sequence[float],
    path: Path,
) -> Path:
    """The reader's version of the tutorial's picture: the first test numbers, as read."""
    wrong = sum(r != t for r, t in zip(readings, texts, strict=True))
    title = (
        f"test numbers 0-{len(texts) - 1}: {len(texts) - wrong} of {len(texts)} read right "
        "(mistakes in red)"
    )
    figure = numbers_figure(strips, texts, readings, confidences, range(len(texts)), title)
    return save_figure(figure, path)


def history_figure(
    history: dict[str, list[float]], test_accuracy: float | None = None, best: int | None = None
):
    """Loss and accuracy per epoch (training and, if held out, validation)."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        if metric in history:  # a number reader has only validation accuracy (CTC has none)
            axis.plot(epochs, history[metric], "o-", label=f"training {metric}")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], "s--", label=f"validation {metric}")
        if best is not None:
            axis.axvline(
                best, color=MISTAKE_COLOUR, alpha=0.6, label=f"validation best (epoch {best})"
            )
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
    return figure


def plot_history(
    history: dict[str, list[float]],
    path: Path,
    test_accuracy: float | None = None,
    best: int | None = None,
) -> Path:
    """Loss and accuracy per epoch to a PNG; ``best`` marks the epoch whose weights were kept."""
    return save_figure(history_figure(history, test_accuracy, best), path)


def confusion_figure(matrix: np.ndarray, label_names: Sequence[str]):
    """The confusion matrix twice: counts, and each row normalised to its true class."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    normalised = evaluation.normalise_rows(matrix)
    for axis, values, title, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalised, "normalised by true class", ".2f"),
    ):
        axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for (row, column), value in np.ndenumerate(values):
            shade = "white" if normalised[row, column] > 0.5 else "black"
            axis.text(
                column, row, format(value, fmt), ha="center", va="center", fontsize=7, color=shade
            )
        ticks = range(len(label_names))
        axis.set_xticks(
            ticks, label_names, rotation=45 if max(map(len, label_names)) > 2 else 0, fontsize=8
        )
        axis.set_yticks(ticks, label_names, fontsize=8)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
    figure.tight_layout()
    return figure


def reliability_figure(calibration: dict):
    """Accuracy against confidence per bin: on the diagonal is perfectly calibrated."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4.5))
    bins = [b for b in calibration["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    axis.bar(
        centres,
        [b["accuracy"] for b in bins],
        width=width * 0.9,
        color="#1565c0",
        label="accuracy in bin",
    )
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axis.plot(
        centres,
        [b["confidence"] for b in bins],
        "o",
        color=MISTAKE_COLOUR,
        label="mean confidence in bin",
    )
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"reliability diagram (ECE {calibration['ece']:.4f})")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure


def save_inputs(
    digits: Sequence[np.ndarray], path: Path, scale: int = 8, columns: int = 10
) -> Path:
    """The inputs the model saw (28x28 digits or number strips, all of one size), enlarged
    (nearest neighbour: pixels stay visible)."""
    from PIL import Image

    count = len(digits)
    columns = min(columns, count)
    rows = -(-count // columns)
    height, width = (side * scale for side in np.shape(digits[0]))  # 28x28, or a number strip
    gap = 4
    sheet = Image.new("L", (columns * (width + gap) - gap, rows * (height + gap) - gap), 128)
    for index, digit in enumerate(digits):
        tile = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize(
            (width, height), Image.Resampling.NEAREST
        )
        sheet.paste(tile, ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return path


def save_explanations(
    digits: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str],
    path: Path,
) -> Path:
    """Each input beside its explanation map (red: the pixels the answer rests on)."""
    return save_figure(explanations_figure(digits, maps, captions), path)


def explanations_figure(
    digits: Sequence[np.ndarray], maps: Sequence[np.ndarray], captions: Sequence[str]
):
    plt = _pyplot()
    rows = len(digits)
    figure, axes = plt.subplots(rows, 2, figsize=(4, 2 * rows), squeeze=False)
    for row, (digit, heat, caption) in enumerate(zip(digits, maps, captions, strict=True)):
        axes[row, 0].imshow(digit, cmap="gray", interpolation="nearest")
        axes[row, 0].set_title(caption, fontsize=8)
        axes[row, 1].imshow(digit, cmap="gray", interpolation="nearest")
        axes[row, 1].imshow(heat, cmap="Reds", alpha=0.7, interpolation="nearest")
        axes[row, 1].set_title("what it rests on", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------------------- the report

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #212121; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f5f5f5; } td.text, th.text { text-align: left; }
img { max-width: 100%; height: auto; }
.note { color: #555; } .bad { color: #c62828; } code { background: #f5f5f5; padding: 0 .2em; }
"""


def _image_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence], text_columns: int = 1) -> str:
    def cell(tag: str, value, position: int) -> str:
        css = ' class="text"' if position < text_columns else ""
        return f"<{tag}{css}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_section(manifest: dict) -> str:
    layers = manifest.get("layers", [])
    rows = [
        (layer["name"], layer["type"], str(tuple(layer["output_shape"])), f"{layer['params']:,}")
        for layer in layers
    ]
    total = sum(layer["params"] for layer in layers)
    return (
        _table(["layer", "type", "output shape", "parameters"], rows, text_columns=3)
        + f"<p>Total parameters: <b>{total:,}</b></p>"
    )


# Each section of the report is one function of a ReportData, in the order the page shows them.


@dataclass
class ReportData:
    """What the report's sections read: the run's manifest and its test-set predictions."""

    manifest: dict
    test_images: np.ndarray
    test_labels: np.ndarray
    probabilities: np.ndarray
    # (N, 28, 28) uint8 -> (N, 10) probabilities: the model again, to explain its mistakes
    predict_digits: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        self.names = self.manifest["label_names"]
        self.predicted = self.probabilities.argmax(axis=1)
        self.confidences = self.probabilities.max(axis=1)
        self.metrics = self.manifest["metrics"]
        self.history = self.manifest.get("history") or {}
        self.matrix = evaluation.confusion_matrix(self.test_labels, self.predicted, len(self.names))

    def digits_image(self, chosen: Sequence[int], title: str, alt: str) -> str:
        chosen = list(chosen)
        figure = digits_figure(
            self.test_images[chosen],
            self.test_labels[chosen],
            self.predicted[chosen],
            self.names,
            chosen,
            self.confidences[chosen],
            title,
        )
        return _image_tag(figure_png(figure), alt)


def _configuration_section(data: ReportData) -> str:
    manifest = data.manifest
    return (
        "<h2 id='configuration'>Configuration</h2>"
        + _table(["setting", "value"], sorted(manifest["config"].items()))
        + _table(["library", "version"], sorted(manifest.get("versions", {}).items()))
        + f"<p>Training took <b>{manifest.get('train_seconds', 0):.1f} s</b>.</p>"
    )


def _data_section(data: ReportData) -> str:
    manifest = data.manifest
    return (
        "<h2 id='data'>Data</h2>"
        + f"<p>Source: {html.escape(str(manifest.get('data_source', '')))}</p>"
        + _table(["file", "sha256"], sorted(manifest.get("data_sha256", {}).items()), 2)
    )


def _model_section(data: ReportData) -> str:
    return "<h2 id='model'>Model</h2>" + _summary_section(data.manifest)


def _overfitting_note(best: int | None, epochs_run: int) -> str:
    """What the validation curve says about overfitting, from the epoch that was kept."""
    if best is None:
        return (
            "<p class='note'>No validation split in this run (train with a validation split, "
            "e.g. 0.1, to see where validation stops improving).</p>"
        )
    if best < epochs_run:
        return (
            f"<p>Validation loss is lowest at epoch <b>{best}</b> of {epochs_run}; later epochs "
            "fit the training digits better without doing better on held-out ones: that is "
            "overfitting.</p>"
        )
    return (
        f"<p>Validation loss is still falling at the last epoch ({epochs_run}): no sign of "
        "overfitting on held-out digits yet; the train/test gap below still shows some.</p>"
    )


def _training_section(data: ReportData) -> str:
    history, seconds = data.history, data.manifest.get("epoch_seconds", [])
    best = data.manifest.get("best_epoch")
    epochs_run = len(history.get("loss", []))
    rows = [
        (
            epoch + 1,
            *(
                f"{history[key][epoch]:.4f}" if epoch < len(history[key]) else ""
                for key in sorted(history)
            ),
            f"{seconds[epoch]:.2f}" if epoch < len(seconds) else "",
        )
        for epoch in range(epochs_run)
    ]
    curves = ""
    if epochs_run:
        figure = history_figure(history, data.metrics["test_accuracy"], best)
        curves = _image_tag(figure_png(figure), "loss and accuracy per epoch")
    return (
        "<h2 id='training'>Training curves</h2>"
        + curves
        + _overfitting_note(best, epochs_run)
        + _table(["epoch", *sorted(history), "seconds"], rows, 0)
    )


def _test_section(data: ReportData) -> str:
    metrics = data.metrics
    gap = metrics.get("overfitting_gap")
    if gap is None:  # manifests written before the gap was recorded
        gap = metrics["train_accuracy"] - metrics["test_accuracy"]
    return (
        "<h2 id='test'>Test results</h2>"
        + _table(
            ["", "accuracy", "loss"],
            [
                ("test", f"{metrics['test_accuracy']:.4f}", f"{metrics['test_loss']:.4f}"),
                ("train", f"{metrics['train_accuracy']:.4f}", f"{metrics['train_loss']:.4f}"),
            ],
        )
        + f"<p>Gap (train - test accuracy): <b>{gap:+.4f}</b> &mdash; "
        + html.escape(evaluation.overfitting_verdict(gap))
        + ".</p>"
    )


def _confusion_section(data: ReportData) -> str:
    names, matrix = data.names, data.matrix
    image = _image_tag(figure_png(confusion_figure(matrix, names)), "confusion matrix")
    return (
        "<h2 id='confusion'>Confusion matrix</h2>"
        + image
        + _table(
            ["true \\ predicted", *names],
            [(names[k], *matrix[k].tolist()) for k in range(len(names))],
        )
    )


def _per_class_section(data: ReportData) -> str:
    rows = [
        (
            data.names[k],
            f"{s['precision']:.4f}",
            f"{s['recall']:.4f}",
            f"{s['f1']:.4f}",
            s["support"],
        )
        for k, s in enumerate(evaluation.per_class_scores(data.matrix))
    ]
    return "<h2 id='per-class'>Precision, recall and F1 per class</h2>" + _table(
        ["class", "precision", "recall", "F1", "support"], rows
    )


def _predictions_section(data: ReportData) -> str:
    shown = min(PREDICTIONS_SHOWN, len(data.test_images))
    return "<h2 id='predictions'>The first test digits</h2>" + data.digits_image(
        range(shown), f"the first {shown} test digits", "first test digits"
    )


def _mistakes_section(data: ReportData) -> str:
    mistakes = evaluation.confident_mistakes(data.test_labels, data.probabilities, MISTAKES_SHOWN)
    if not mistakes:
        return "<h2 id='mistakes'>Most confidently wrong</h2><p>No test digit is wrong.</p>"
    names = data.names
    return (
        "<h2 id='mistakes'>Most confidently wrong</h2>"
        + data.digits_image(
            [m.index for m in mistakes],
            "the most confidently wrong test digits",
            "confident mistakes",
        )
        + _table(
            ["test index", "true", "predicted", "confidence"],
            [
                (m.index, names[m.true_label], names[m.predicted], f"{m.confidence:.4f}")
                for m in mistakes
            ],
        )
        + _why_mistakes(data, mistakes[:EXPLAINED_MISTAKES])
    )


EXPLAINED_MISTAKES = 6


def _why_mistakes(data: ReportData, mistakes: list) -> str:
    """The worst mistakes beside maps of the pixels each wrong answer rests on."""
    if data.predict_digits is None or not mistakes:
        return ""
    from digitlab.explain import occlusion_map

    digits = [data.test_images[m.index] for m in mistakes]
    maps = [
        occlusion_map(digit, data.predict_digits, m.predicted)
        for digit, m in zip(digits, mistakes, strict=True)
    ]
    captions = [
        f"#{m.index}: said {data.names[m.predicted]}, is {data.names[m.true_label]}"
        for m in mistakes
    ]
    return (
        "<h3>Why it said that</h3><p class='note'>In red, the pixels each wrong answer rests "
        "on (occlusion: each 6x6 patch hidden in turn; the more the answer's probability drops, "
        "the redder). Often a stroke that looks like part of the wrong digit.</p>"
        + _image_tag(figure_png(explanations_figure(digits, maps, captions)), "why it said that")
    )


def _calibration_section(data: ReportData) -> str:
    calibration = evaluation.calibration(data.test_labels, data.probabilities)
    image = _image_tag(figure_png(reliability_figure(calibration)), "reliability diagram")
    return (
        "<h2 id='calibration'>Calibration</h2>"
        + image
        + f"<p>Expected calibration error: <b>{calibration['ece']:.4f}</b> (10 bins; 0 is "
        "perfect: when the model says 90%, it is right 90% of the time).</p>"
    )


@dataclass
class NumberReportData:
    """What a number reader's report reads: its manifest and its test numbers as read."""

    manifest: dict
    numbers: object  # training.NumberEvaluation

    def __post_init__(self):
        self.metrics = self.manifest["metrics"]
        self.history = self.manifest.get("history") or {}

    def numbers_image(self, chosen: Sequence[int], title: str, alt: str) -> str:
        chosen = list(chosen)
        numbers = self.numbers
        figure = numbers_figure(
            numbers.strips[chosen],
            [numbers.texts[i] for i in chosen],
            [numbers.readings[i] for i in chosen],
            [numbers.confidences[i] for i in chosen],
            chosen,
            title,
        )
        return _image_tag(figure_png(figure), alt)


def _number_test_section(data: NumberReportData) -> str:
    metrics = data.metrics
    gap = metrics["train_accuracy"] - metrics["test_accuracy"]
    return (
        "<h2 id='test'>Test results</h2>"
        f"<p>{len(data.numbers.texts):,} test numbers of 1-8 digits, composed from MNIST's "
        "test digits (writers the reader never saw). <b>Exact</b>: the whole number read "
        "right. <b>Digits</b>: 1 - (digits missed, added or wrong) / digits written.</p>"
        + _table(
            ["", "exact", "digits", "CTC loss"],
            [
                (
                    name,
                    f"{metrics[f'{name}_accuracy']:.4f}",
                    f"{metrics.get(f'{name}_digit_accuracy', float('nan')):.4f}",
                    f"{metrics[f'{name}_loss']:.4f}",
                )
                for name in ("test", "train")
            ],
        )
        + f"<p>Gap (train - test, exact): <b>{gap:+.4f}</b> &mdash; "
        + html.escape(evaluation.overfitting_verdict(gap))
        + ".</p>"
    )


def _by_length_section(data: NumberReportData) -> str:
    rows = [
        (length, scores["numbers"], f"{scores['exact']:.4f}", f"{scores['digit_accuracy']:.4f}",
         f"{scores['right_length']:.4f}")
        for length, scores in sorted(data.numbers.by_length.items())
    ]  # fmt: skip
    return "<h2 id='by-length'>By length</h2>" + _table(
        ["digits", "numbers", "exact", "digits right", "right length"], rows
    )


def _first_numbers_section(data: NumberReportData) -> str:
    shown = min(PREDICTIONS_SHOWN, len(data.numbers.texts))
    return "<h2 id='predictions'>The first test numbers</h2>" + data.numbers_image(
        range(shown), f"the first {shown} test numbers, as the reader saw and read them",
        "first test numbers",
    )  # fmt: skip


def _number_mistakes_section(data: NumberReportData) -> str:
    numbers = data.numbers
    wrong = [i for i, (t, r) in enumerate(zip(numbers.texts, numbers.readings, strict=True))
             if t != r]  # fmt: skip
    wrong.sort(key=lambda i: -numbers.confidences[i])
    wrong = wrong[:MISTAKES_SHOWN]
    if not wrong:
        return "<h2 id='mistakes'>Worst mistakes</h2><p>Every test number was read right.</p>"
    return (
        "<h2 id='mistakes'>Worst mistakes</h2>"
        "<p>The wrong readings the reader was surest of.</p>"
        + data.numbers_image(wrong, "the most confidently misread test numbers", "mistakes")
        + _table(
            ["test index", "true", "read", "confidence"],
            [
                (
                    i,
                    numbers.texts[i],
                    numbers.readings[i] or "(nothing)",
                    f"{numbers.confidences[i]:.4f}",
                )
                for i in wrong
            ],  # fmt: skip
        )
    )


SECTIONS: list[tuple[str, Callable[[ReportData], str]]] = [
    ("configuration", _configuration_section),
    ("data", _data_section),
    ("model", _model_section),
    ("training curves", _training_section),
    ("test results", _test_section),
    ("confusion matrix", _confusion_section),
    ("per-class scores", _per_class_section),
    ("first predictions", _predictions_section),
    ("mistakes", _mistakes_section),
    ("calibration", _calibration_section),
]


# A number reader's report: the same first four sections, then its own.
NUMBER_SECTIONS: list[tuple[str, Callable[[NumberReportData], str]]] = [
    *SECTIONS[:4],
    ("test results", _number_test_section),
    ("by length", _by_length_section),
    ("first numbers", _first_numbers_section),
    ("mistakes", _number_mistakes_section),
]


def build_report(
    folder: Path,
    manifest: dict,
    data: ReportData | NumberReportData,
    progress: Callable[[str], None] = lambda step: None,
    run_name: str | None = None,
) -> Path:
    """Write ``report.html`` in a run folder: everything about the run, images embedded.

    ``data`` is a digit model's test predictions (``ReportData``) or a number reader's test
    numbers (``NumberReportData``). ``run_name`` is the run's final name when ``folder`` is
    still a temporary one.
    """
    run_name = run_name or folder.name
    title = (
        f"<h1>digitlab run: {html.escape(manifest['model'])} on "
        f"{html.escape(manifest['dataset'])}</h1>"
        f"<p class='note'>{html.escape(str(folder.parent / run_name))} &middot; created "
        f"{html.escape(manifest.get('created', ''))}</p>"
    )
    sections = [title]
    for name, section in NUMBER_SECTIONS if isinstance(data, NumberReportData) else SECTIONS:
        progress(name)
        sections.append(section(data))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>digitlab report: {html.escape(run_name)}</title>"
        f"<style>{STYLE}</style></head><body>"
        + "\n".join(f"<section>{s}</section>" for s in sections)
        + "</body></html>\n"
    )
    path = folder / REPORT_FILE
    atomic_write_text(path, page)
    return path
