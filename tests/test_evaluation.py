"""Evaluation functions against small examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import evaluation


def test_confusion_matrix_and_scores_match_a_hand_computed_example():
    # 3 classes, 8 examples. Rows true, columns predicted:
    #   true 0: predicted 0, 0, 1      -> [2, 1, 0]
    #   true 1: predicted 1, 1         -> [0, 2, 0]
    #   true 2: predicted 2, 0, 1      -> [1, 1, 1]
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 2, 0, 1])
    matrix = evaluation.confusion_matrix(true, predicted, num_classes=3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 2, 0], [1, 1, 1]])
    assert evaluation.accuracy(true, predicted) == pytest.approx(5 / 8)
    np.testing.assert_allclose(evaluation.normalise_rows(matrix)[2], [1 / 3, 1 / 3, 1 / 3])
    scores = evaluation.per_class_scores(matrix)
    # class 0: precision 2/3 (column 0 sums to 3), recall 2/3, F1 2/3
    assert scores[0] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # class 1: precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert scores[1] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    # class 2: precision 1/1, recall 1/3, F1 = 2 * 1 * (1/3) / (4/3) = 0.5
    assert scores[2] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})


def test_a_class_never_predicted_scores_zero_not_nan():
    matrix = evaluation.confusion_matrix(np.array([0, 1]), np.array([0, 0]), num_classes=3)
    scores = evaluation.per_class_scores(matrix)
    assert scores[1]["precision"] == 0.0 and scores[2] == pytest.approx(
        {"precision": 0, "recall": 0, "f1": 0, "support": 0}
    )


def test_confident_mistakes_are_the_surest_wrong_answers_first():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.3, 0.7]])
    true = np.array([0, 0, 1, 0, 1])  # wrong: index 1 (0.8), 2 (0.6), 3 (0.95)
    mistakes = evaluation.confident_mistakes(true, probabilities, count=2)
    assert [(m.index, m.true_label, m.predicted) for m in mistakes] == [(3, 0, 1), (1, 0, 1)]
    assert mistakes[0].confidence == pytest.approx(0.95)


def test_expected_calibration_error_by_hand():
    # Two bins used: confidence 0.95 (4 examples, 3 right -> accuracy .75, gap .2) and
    # 0.55 (4 examples, 2 right -> accuracy .5, gap .05). ECE = .5 * .2 + .5 * .05 = .125
    probabilities = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 4)
    true = np.array([0, 0, 0, 1, 0, 0, 1, 1])
    result = evaluation.calibration(true, probabilities, bins=10)
    assert result["ece"] == pytest.approx(0.125)
    used = [b for b in result["bins"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in used] == [(4, 0.5), (4, 0.75)]
    perfect = evaluation.calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == pytest.approx(0.0)


def test_overfitting_verdict_and_prediction_lines():
    assert evaluation.overfitting_verdict(0.01).startswith("overfitting")
    assert evaluation.overfitting_verdict(-0.01) == "no overfitting gap"
    lines = evaluation.prediction_lines([7, 2, 1], [7, 2, 7], first_index=5)
    assert lines == [
        "digits 5-7 of the test set:",
        "true       7 2 1",
        "predicted  7 2 7   (2 of 3 right)",
    ]
