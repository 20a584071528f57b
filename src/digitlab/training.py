"""Build, compile, fit and measure a model: the tutorial's six steps, each announced to the user.

``train`` tells the whole ``[1/6]`` ... ``[6/6]`` story through its ``report`` callback; the CLI
passes ``click.echo``, tests pass a list's ``append``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError, evaluation, models
from digitlab.augment import augment
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
    best_epoch: int | None = None  # 1-based, the epoch whose weights were kept (with validation)
    stopped_after: int | None = None  # the last epoch run, when early stopping ended training

    @property
    def overfitting_gap(self) -> float:
        return self.metrics["train_accuracy"] - self.metrics["test_accuracy"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return models.get(self.config.model).input_shape


def _epoch_timer() -> tuple[keras.callbacks.Callback, list[float]]:
    import keras

    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    return EpochTimer(), seconds


def _keep_best(patience: int) -> keras.callbacks.Callback:
    """Remember the weights of the epoch with the lowest validation loss and put them back at
    the end; with ``patience`` > 0, stop once that many epochs in a row did not beat it."""
    import keras

    class KeepBest(keras.callbacks.Callback):
        best_loss = float("inf")
        best_epoch = 0  # 1-based; 0 until an epoch has been validated
        best_weights = None
        stopped_after = 0  # the last epoch run when early stopping ended training, else 0

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("val_loss")
            if loss is None:
                return
            if loss < self.best_loss:
                self.best_loss, self.best_epoch = loss, epoch + 1
                self.best_weights = self.model.get_weights()
            elif patience and epoch + 1 - self.best_epoch >= patience:
                self.stopped_after = epoch + 1
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return KeepBest()


def _check(config: TrainConfig, train_count: int) -> None:
    if not 0.0 <= config.validation_split < 1.0:
        raise DigitlabError(f"validation split must be in [0, 1), not {config.validation_split}")
    if config.epochs < 1 or config.batch_size < 1:
        raise DigitlabError("epochs and batch size must be at least 1")
    if config.early_stopping < 0:
        raise DigitlabError("early stopping must be 0 (off) or a number of epochs")
    if config.early_stopping and not config.validation_split:
        raise DigitlabError("early stopping needs a validation split")
    if config.plain_final_epochs < 0:
        raise DigitlabError("plain_final_epochs must be 0 or more")
    if config.schedule not in SCHEDULES:
        raise DigitlabError(f"unknown schedule {config.schedule!r}: choose {', '.join(SCHEDULES)}")
    if train_count - _validation_count(config, train_count) < 1:
        raise DigitlabError("no training images left after the validation split")


def _validation_count(config: TrainConfig, train_count: int) -> int:
    return int(round(train_count * config.validation_split))


SCHEDULES = ("constant", "warmup-cosine")
WARMUP_FRACTION = 1 / 8  # of all steps: long enough for batch norm statistics to settle


def learning_rate(config: TrainConfig, total_steps: int):
    """A float for "constant", else a Keras schedule over ``total_steps`` optimizer steps."""
    import keras

    if config.schedule == "constant":
        return config.learning_rate
    warmup_steps = max(1, int(total_steps * WARMUP_FRACTION))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=config.learning_rate,
        warmup_steps=warmup_steps,
    )


def augmented_batches(
    images: np.ndarray, labels: np.ndarray, config: TrainConfig, input_shape: tuple[int, ...]
) -> keras.utils.PyDataset:
    """Shuffled batches of freshly augmented digits, a new order and new transforms each epoch;
    the last ``config.plain_final_epochs`` epochs unaugmented.

    (N, 28, 28) uint8 -> batches of (batch_size, *input_shape) float32 in [0, 1].
    """
    import keras

    augmented_epochs = config.epochs - plain_epochs(config)

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(config.seed)
            self.order = self.rng.permutation(len(images))
            self.epoch = 0

        def __len__(self):
            return -(-len(images) // config.batch_size)

        def __getitem__(self, index):
            chosen = self.order[index * config.batch_size : (index + 1) * config.batch_size]
            if self.epoch >= augmented_epochs:
                return models.prepare(images[chosen], input_shape), labels[chosen]
            batch = augment(images[chosen], self.rng)  # float32 in [0, 1], like prepare()
            return batch.reshape((len(chosen), *input_shape)), labels[chosen]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(images))
            self.epoch += 1

    return AugmentedBatches()


def train(
    config: TrainConfig,
    data: Arrays,
    report: Report = print,
    verbose: int = 2,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    data_origin: str = "",
) -> TrainResult:
    """Build, compile, fit and evaluate ``config.model`` on ``data``, reporting each step.

    ``data_origin`` says where the data came from in step 1 (``DataFiles.origin``).
    ``callbacks`` run after digitlab's own (the epoch timer, keeping the best epoch).
    """
    import keras

    (x_train, y_train), (x_test, y_test) = data
    _check(config, len(x_train))
    report(
        f"[1/6] loaded {data_origin or config.dataset}: "
        f"train {x_train.shape} {x_train.dtype}, labels {y_train.shape} "
        f"{y_train.min()}-{y_train.max()}; test {x_test.shape}, labels {y_test.shape}"
    )
    keras.utils.set_random_seed(config.seed)
    held_out = _validation_count(config, len(x_train))
    fit_count = len(x_train) - held_out
    steps_per_epoch = -(-fit_count // config.batch_size)

    model = models.build(config.model)
    models.compile_model(
        model,
        learning_rate=learning_rate(config, steps_per_epoch * config.epochs),
        steps_per_execution=config.steps_per_execution,
    )
    report(
        f"[2/6] built {model.name}: {model.count_params():,} parameters; compiled with adam"
        f"{_describe_rate(config)}, sparse categorical cross-entropy, accuracy"
    )

    input_shape = models.get(config.model).input_shape
    train_inputs = models.prepare(x_train, input_shape)  # (N, 28, 28) uint8 -> float32 in [0, 1]
    test_inputs = models.prepare(x_test, input_shape)
    report(
        f"[3/6] scaled pixels to float32 in [0, 1]: train {train_inputs.shape}, "
        f"test {test_inputs.shape}"
    )

    # The validation images come from the end of the training set, as Keras' validation_split.
    fit_arguments: dict = {"epochs": config.epochs}
    if held_out:
        fit_arguments["validation_data"] = (train_inputs[fit_count:], y_train[fit_count:])
    if config.augment:
        fit_arguments["x"] = augmented_batches(
            x_train[:fit_count], y_train[:fit_count], config, input_shape
        )
    else:
        fit_arguments |= {
            "x": train_inputs[:fit_count],
            "y": y_train[:fit_count],
            "batch_size": config.batch_size,
            "shuffle": True,
        }
    report(
        f"[4/6] training {config.epochs} epochs at batch size {config.batch_size}"
        + _describe_augmentation(config)
        + _describe_validation(config, held_out)
    )
    timer, epoch_seconds = _epoch_timer()
    keep_best = _keep_best(config.early_stopping)
    started = time.perf_counter()
    history = model.fit(callbacks=[timer, keep_best, *callbacks], verbose=verbose, **fit_arguments)
    train_seconds = time.perf_counter() - started
    if keep_best.stopped_after:
        report(f"      stopped early after epoch {keep_best.stopped_after}")
    if keep_best.best_epoch:
        report(
            f"      kept epoch {keep_best.best_epoch} (lowest validation loss "
            f"{keep_best.best_loss:.4f})"
        )

    # One pass over the test set gives the metrics, the first 20 predictions and the report's
    # data (Keras' evaluate() and predict() would each make their own).
    probabilities = model.predict(test_inputs, verbose=0, batch_size=EVALUATE_BATCH_SIZE)
    test_loss, test_accuracy = score(probabilities, y_test)
    shown = min(PREDICTIONS_SHOWN, len(test_inputs))
    # All training images, as the tutorial measures them: unaugmented, held-out ones included.
    train_loss, train_accuracy = model.evaluate(
        train_inputs, y_train, verbose=0, batch_size=EVALUATE_BATCH_SIZE
    )
    result = TrainResult(
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
        best_epoch=keep_best.best_epoch or None,
        stopped_after=keep_best.stopped_after or None,
    )
    _report_results(result, y_test, len(x_train), report)
    return result


def _report_results(result: TrainResult, y_test: np.ndarray, train_count: int, report) -> None:
    """Steps 5 and 6: the first predictions against the truth, then test against train."""
    shown = len(result.first_labels)
    report(f"[5/6] predicted the first {shown} test digits:")
    for line in evaluation.prediction_lines(y_test[:shown], result.first_labels):
        report(f"      {line}")
    metrics, gap = result.metrics, result.overfitting_gap
    report(
        f"[6/6] evaluated on all {len(y_test):,} test images:\n"
        f"      test accuracy  {metrics['test_accuracy']:.4f}  (loss {metrics['test_loss']:.4f})\n"
        f"      train accuracy {metrics['train_accuracy']:.4f}  "
        f"(loss {metrics['train_loss']:.4f}, all {train_count:,} training images)\n"
        f"      gap            {gap:+.4f} -> {evaluation.overfitting_verdict(gap)}"
    )
    epochs = ", ".join(f"{seconds:.2f}" for seconds in result.epoch_seconds)
    report(f"trained in {result.train_seconds:.1f} s (epochs: {epochs} s)")


def plain_epochs(config: TrainConfig) -> int:
    """How many final epochs train on unaugmented digits: at most half of a short run."""
    return min(config.plain_final_epochs, config.epochs // 2) if config.augment else 0


def _describe_augmentation(config: TrainConfig) -> str:
    if not config.augment:
        return ""
    plain = plain_epochs(config)
    if plain == 0:
        return ", each batch randomly shifted, rotated and rescaled"
    return (
        ", each batch randomly shifted, rotated and rescaled "
        f"(the last {plain} epoch{'s' if plain > 1 else ''}: the digits as they are)"
    )


def _describe_validation(config: TrainConfig, held_out: int) -> str:
    if not held_out:
        return ""
    stopping = (
        f", stopping after {config.early_stopping} without progress"
        if config.early_stopping
        else ""
    )
    return f", holding out {held_out:,} images for validation (the best epoch is kept{stopping})"


def _describe_rate(config: TrainConfig) -> str:
    if config.schedule == "constant":
        return f" (learning rate {config.learning_rate:g})"
    return f" (learning rate warm-up to {config.learning_rate:g}, then cosine decay to 0)"
