"""Pure functions over labels and probabilities: accuracy, confusion, per-class scores, mistakes,
calibration, and the sentences the CLI and the report build from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 10  # equal-width confidence bins, as in Guo et al. 2017


def accuracy(true_labels: np.ndarray, predicted: np.ndarray) -> float:
    true_labels, predicted = np.asarray(true_labels), np.asarray(predicted)
    return float(np.mean(true_labels == predicted)) if len(true_labels) else 0.0


def confusion_matrix(
    true_labels: np.ndarray, predicted: np.ndarray, num_classes: int = 10
) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true label, column = prediction."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_labels), np.asarray(predicted)), 1)
    return matrix


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row as fractions of its true class (a row with no examples stays zero)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def per_class_scores(matrix: np.ndarray) -> list[dict[str, float]]:
    """Precision, recall, F1 and support for each class, from a confusion matrix."""
    scores = []
    for k in range(matrix.shape[0]):
        true_positive = matrix[k, k]
        predicted_k, actual_k = matrix[:, k].sum(), matrix[k, :].sum()
        precision = true_positive / predicted_k if predicted_k else 0.0
        recall = true_positive / actual_k if actual_k else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(
            {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(actual_k),
            }
        )
    return scores


@dataclass
class Mistake:
    index: int
    true_label: int
    predicted: int
    confidence: float


def confident_mistakes(
    true_labels: np.ndarray, probabilities: np.ndarray, count: int = 20
) -> list[Mistake]:
    """The wrong predictions the model was surest of, surest first."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != true_labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [
        Mistake(int(i), int(true_labels[i]), int(predicted[i]), float(confidence[i])) for i in order
    ]


def calibration(
    true_labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict:
    """Reliability diagram data and the expected calibration error (ECE).

    ECE = sum over bins of (share of examples in the bin) * |accuracy - mean confidence|.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        count = int(chosen.sum())
        bin_accuracy = float(correct[chosen].mean()) if count else 0.0
        bin_confidence = float(confidence[chosen].mean()) if count else 0.0
        ece += count / max(len(confidence), 1) * abs(bin_accuracy - bin_confidence)
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "accuracy": bin_accuracy,
                "confidence": bin_confidence,
            }
        )
    return {"bins": rows, "ece": float(ece)}


def overfitting_verdict(gap: float) -> str:
    """What a train-minus-test accuracy gap means, in words (the CLI and the report say it)."""
    if gap > 0:
        return "overfitting: the model knows its training digits better than new ones"
    return "no overfitting gap"


def prediction_lines(true_labels, predicted, first_index: int = 0) -> list[str]:
    """The tutorial's printout of a slice of test digits: true labels above predicted ones."""
    right = sum(int(p) == int(t) for p, t in zip(predicted, true_labels, strict=True))
    return [
        f"digits {first_index}-{first_index + len(predicted) - 1} of the test set:",
        "true       " + " ".join(str(int(t)) for t in true_labels),
        "predicted  "
        + " ".join(str(int(p)) for p in predicted)
        + f"   ({right} of {len(predicted)} right)",
    ]


# ------------------------------------------------------------------------- whole numbers


@dataclass
class NumberEvaluation:
    """A number reader's test: the numbers, what it read, and the scores by length."""

    strips: np.ndarray  # (N, 28, 224) uint8
    texts: list[str]
    readings: list[str]
    confidences: list[float]  # per reading: the product of its digits' confidences

    @property
    def by_length(self) -> dict[int, dict[str, float]]:
        return number_scores_by_length(self.texts, self.readings)

    @property
    def scores(self) -> dict[str, float]:
        return number_scores(self.texts, self.readings)


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning one into the other."""
    previous = list(range(len(second) + 1))
    for row, a in enumerate(first, 1):
        current = [row]
        for column, b in enumerate(second, 1):
            current.append(
                min(previous[column] + 1, current[-1] + 1, previous[column - 1] + (a != b))
            )
        previous = current
    return previous[-1]


def number_scores(truth: Sequence[str], read: Sequence[str]) -> dict[str, float]:
    """How well numbers were read: ``exact`` (the whole number right), ``digit_accuracy``
    (1 - edits needed / digits written: a missed, extra or wrong digit each cost one) and
    ``right_length``."""
    count = max(len(truth), 1)
    edits = sum(edit_distance(t, r) for t, r in zip(truth, read, strict=True))
    return {
        "numbers": len(truth),
        "exact": sum(t == r for t, r in zip(truth, read, strict=True)) / count,
        "digit_accuracy": 1 - edits / max(sum(len(t) for t in truth), 1),
        "right_length": sum(len(t) == len(r) for t, r in zip(truth, read, strict=True)) / count,
    }


def number_scores_by_length(truth: Sequence[str], read: Sequence[str]) -> dict[int, dict]:
    lengths = sorted({len(t) for t in truth})
    return {
        length: number_scores(
            [t for t in truth if len(t) == length],
            [r for t, r in zip(truth, read, strict=True) if len(t) == length],
        )
        for length in lengths
    }
