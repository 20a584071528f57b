"""Compile, fit and measure a model: the tutorial's steps 2 to 6, each announced to the user."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError, models
from digitlab.config import PREDICTIONS_SHOWN, TrainConfig
from digitlab.datasets import Arrays, Report

if TYPE_CHECKING:
    import keras

EVALUATE_BATCH_SIZE = 1024  # evaluation has no updates: bigger batches, same numbers, faster
PROBABILITY_EPSILON = 1e-7  # Keras clips probabilities so before taking the log in its loss


def score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(sparse categorical cross-entropy, accuracy) of predicted probabilities, as Keras counts."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], PROBABILITY_EPSILON, 1.0)
    return float(-np.log(picked).mean()), float(np.mean(probabilities.argmax(axis=1) == labels))


@dataclass
class TrainResult:
    model: keras.Model
    config: TrainConfig
    history: dict[str, list[float]]  # per epoch: loss, accuracy (and val_* with a split)
    epoch_seconds: list[float]
    train_seconds: float
    metrics: dict[str, float]  # test_loss, test_accuracy, train_loss, train_accuracy
    first_labels: list[int] = field(default_factory=list)  # predicted, first 20 test digits
    first_confidences: list[float] = field(default_factory=list)
    test_probabilities: np.ndarray | None = None  # (N_test, 10), for the report

    @property
    def overfitting_gap(self) -> float:
        return self.metrics["train_accuracy"] - self.metrics["test_accuracy"]


def _epoch_timer() -> tuple[keras.callbacks.Callback, list[float]]:
    import keras

    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    return EpochTimer(), seconds


def _fit_arguments(config: TrainConfig, train_count: int) -> dict:
    if not 0.0 <= config.validation_split < 1.0:
        raise DigitlabError(f"--validation-split must be in [0, 1), not {config.validation_split}")
    if config.epochs < 1 or config.batch_size < 1:
        raise DigitlabError("--epochs and --batch-size must be at least 1")
    if train_count * (1 - config.validation_split) < 1:
        raise DigitlabError("no training images left after the validation split")
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "validation_split": config.validation_split,
    }


def train(
    config: TrainConfig, data: Arrays, report: Report = print, verbose: int = 2
) -> TrainResult:
    """Build, compile, fit and evaluate ``config.model`` on ``data``, reporting each step."""
    import keras

    (x_train, y_train), (x_test, y_test) = data
    fit_arguments = _fit_arguments(config, len(x_train))
    keras.utils.set_random_seed(config.seed)

    model = models.build(config.model)
    models.compile_model(model, steps_per_execution=config.steps_per_execution)
    report(
        f"[2/6] built {model.name}: {model.count_params():,} parameters; compiled with adam, "
        f"sparse categorical cross-entropy, accuracy"
    )

    input_shape = models.INPUT_SHAPES[config.model]
    train_inputs = models.prepare(x_train, input_shape)  # (N, 28, 28) uint8 -> float32 in [0, 1]
    test_inputs = models.prepare(x_test, input_shape)
    report(
        f"[3/6] scaled pixels to float32 in [0, 1]: train {train_inputs.shape}, "
        f"test {test_inputs.shape}"
    )

    report(
        f"[4/6] training {config.epochs} epochs at batch size {config.batch_size}"
        + (
            f", holding out {config.validation_split:.0%} for validation"
            if config.validation_split
            else ""
        )
    )
    timer, epoch_seconds = _epoch_timer()
    started = time.perf_counter()
    history = model.fit(
        train_inputs, y_train, shuffle=True, callbacks=[timer], verbose=verbose, **fit_arguments
    )
    train_seconds = time.perf_counter() - started

    # One pass over the test set gives the metrics, the first 20 predictions and the report's
    # data (Keras' evaluate() and predict() would each make their own).
    probabilities = model.predict(test_inputs, verbose=0, batch_size=EVALUATE_BATCH_SIZE)
    test_loss, test_accuracy = score(probabilities, y_test)
    shown = min(PREDICTIONS_SHOWN, len(test_inputs))
    train_loss, train_accuracy = model.evaluate(
        train_inputs, y_train, verbose=0, batch_size=EVALUATE_BATCH_SIZE
    )
    return TrainResult(
        model=model,
        config=config,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        epoch_seconds=epoch_seconds,
        train_seconds=train_seconds,
        metrics={
            "test_loss": float(test_loss),
            "test_accuracy": float(test_accuracy),
            "train_loss": float(train_loss),
            "train_accuracy": float(train_accuracy),
        },
        first_labels=[int(label) for label in np.argmax(probabilities[:shown], axis=1)],
        first_confidences=[float(p) for p in np.max(probabilities[:shown], axis=1)],
        test_probabilities=probabilities,
    )
