"""Build, compile, fit and measure a model: the tutorial's six steps, each announced to the user.

``train`` tells the whole ``[1/6]`` ... ``[6/6]`` story through its ``report`` callback; the CLI
passes ``click.echo``, tests pass a list's ``append``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError, distributed, evaluation, models
from digitlab.augment import augment, other_handwriting
from digitlab.config import NUM_CLASSES, PREDICTIONS_SHOWN, TrainConfig
from digitlab.datasets import Arrays, Report
from digitlab.distributed import Job
from digitlab.made import made

if TYPE_CHECKING:
    import keras

    from digitlab import synthetic

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
    numbers: evaluation.NumberEvaluation | None = None  # a reader's test numbers, as read
    # the "not a digit" rule (calibrate_rejection); a number reader's "not a number" rule
    # (calibrate_number_rejection)
    rejection: dict | None = None
    distributed: dict | None = None  # trained data-parallel: processes and devices
    # a reader trained further (``TrainConfig.start_from``): the reader it started from (its
    # folder, when it was made, its test accuracy, and what it had started from in turn)
    started_from: dict | None = None

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
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    input_shape: tuple[int, ...],
    non_digits: np.ndarray | None = None,
    devices: int = 1,
) -> keras.utils.PyDataset:
    """Shuffled batches of freshly augmented digits, a new order and new transforms each epoch;
    the last ``config.plain_final_epochs`` epochs unaugmented. ``config.handwriting_share`` of
    the augmented digits (and non-digits) also get another writer's pen, scan or slant.

    With ``non_digits``, each batch also holds ``config.non_digit_share`` of its size in
    randomly chosen non-digits (augmented alike), labelled NUM_CLASSES: "not a digit"; as many
    as split evenly over this process's ``devices``.

    (N, 28, 28) uint8 -> batches of (batch_size (+ non-digits), *input_shape) float32 in [0, 1].
    """
    import keras

    augmented_epochs = config.epochs - plain_epochs(config)
    extra = round(config.batch_size * config.non_digit_share) if non_digits is not None else 0
    extra -= extra % devices

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
            digits, targets = images[chosen], labels[chosen]
            if extra:
                picked = non_digits[self.rng.integers(0, len(non_digits), extra)]
                digits = np.concatenate([digits, picked])
                targets = np.concatenate([targets, np.full(extra, NUM_CLASSES, targets.dtype)])
            if self.epoch >= augmented_epochs:
                return models.prepare(digits, input_shape), targets
            batch = augment(digits, self.rng)  # float32 in [0, 1], like prepare()
            if config.handwriting_share:  # non-digits too: no shortcut from "looks scanned"
                other_handwriting(batch, self.rng, config.handwriting_share)
            return batch.reshape((len(digits), *input_shape)), targets

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(images))
            self.epoch += 1

    return AugmentedBatches()


def read_numbers(
    model: keras.Model, strips: np.ndarray
) -> tuple[list[str], list[float], list[float]]:
    """(N, 28, 224) uint8 strips -> what the reader reads in each, how sure it is, and how
    much the reading looks like a number (``models.reading_score``), as
    ``Predictor.read_strips`` reads without the digit model's check."""
    inputs = strips[..., None].astype("float32") / 255
    probabilities = models.read_steps(
        lambda shifted: model.predict(shifted, verbose=0, batch_size=EVALUATE_BATCH_SIZE // 4),
        inputs,
    )
    outputs = models.member_steps(probabilities)
    numbers = [models.readers_decode(members) for members in outputs]
    readings = ["".join(str(digit.label) for digit in number) for number in numbers]
    confidences = [
        float(np.prod([digit.probabilities[digit.label] for digit in number])) for number in numbers
    ]
    scores = [
        models.reading_score(members, [digit.label for digit in number])
        for members, number in zip(outputs, numbers, strict=True)
    ]
    return readings, confidences, scores


READER_MAX_LENGTH = 10  # digits in the longest number the reader is trained on
READER_TRAIN_SCORED = 2_000  # training numbers read again for the train accuracy


def _exact_accuracy_callback(strips: np.ndarray, texts: list[str]) -> keras.callbacks.Callback:
    """Adds ``val_accuracy``, the share of validation numbers read exactly, to each epoch's
    logs (CTC has no per-step accuracy for Keras to count)."""
    import keras

    class ExactAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            readings, _, _ = read_numbers(self.model, strips)
            if logs is not None:
                logs["val_accuracy"] = float(
                    np.mean([r == t for r, t in zip(readings, texts, strict=True)])
                )

    return ExactAccuracy()


@dataclass
class _Member:
    """One reader trained: its model and how its training went."""

    model: keras.Model
    training: synthetic.Numbers  # the numbers it trained on
    validation: synthetic.Numbers | None  # composed from held-out digits, if any
    history: dict[str, list[float]]
    epoch_seconds: list[float]
    train_seconds: float
    best_epoch: int | None
    stopped_after: int | None


def _train_member(
    config: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    report: Report,
    verbose: int,
    callbacks: Sequence[keras.callbacks.Callback],
    label: str,
    test: synthetic.Numbers,
    start: keras.Model | None = None,
) -> _Member:
    """Steps 2-4 for one reader, seeded by ``config.seed``: build it (or take ``start``, a
    trained reader, to train further), compose its numbers, fit."""
    import keras

    from digitlab import synthetic

    keras.utils.set_random_seed(config.seed)
    held_out = _validation_count(config, len(x_train))
    fit_count = len(x_train) - held_out
    steps_per_epoch = -(-config.numbers // config.batch_size)
    model = start if start is not None else models.build(config.model)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(config, steps_per_epoch * config.epochs)),
        loss=models.ctc_loss,
        steps_per_execution=config.steps_per_execution,
    )
    origin = f"built {model.name}{label}"
    if start is not None:
        origin = f"took {model.name}{label} of {config.start_from}"
    report(
        f"[2/6] {origin}: {model.count_params():,} parameters; compiled with "
        f"adam{_describe_rate(config)}, CTC loss"
    )

    started = time.perf_counter()
    style = synthetic.HANDWRITING.with_touching(config.touching_share)
    training = synthetic.make_numbers(
        x_train[:fit_count], y_train[:fit_count], config.numbers, config.seed,
        READER_MAX_LENGTH, config.photo_share, style=style,
        other_writers_share=config.handwriting_share, hollow_share=config.hollow_share,
    )  # fmt: skip
    validation = (
        synthetic.make_numbers(
            x_train[fit_count:],
            y_train[fit_count:],
            max(held_out // 3, 1),
            config.seed + 1,
            READER_MAX_LENGTH,
            config.photo_share,
            style=style,
            other_writers_share=config.handwriting_share,
            hollow_share=config.hollow_share,
        )  # fmt: skip
        if held_out
        else None
    )
    report(
        f"[3/6] composed {len(training.texts):,} training numbers of 1-{READER_MAX_LENGTH} "
        f"digits from {fit_count:,} training digits ({config.touching_share:.0%} of their gaps "
        f"touching, {training.photographed.mean():.0%} photographed and read back, "
        f"{training.other_writers.mean():.0%} written by other writers, pens and scanners or "
        "with hollow strokes, scanned and read back), "
        + (f"{len(validation.texts):,} validation numbers from the {held_out:,} held-out digits, "
           if validation else "")
        + f"{len(test.texts):,} test numbers of 1-8 digits from the test digits, in "
        f"{time.perf_counter() - started:.0f} s: strips {training.strips.shape[1:]} uint8, "
        "scaled to float32 in [0, 1]"
    )  # fmt: skip
    fit_arguments: dict = {
        "x": _reader_inputs(training),
        "y": training.targets(READER_MAX_LENGTH),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "shuffle": True,
    }
    own_callbacks = []
    if validation:
        fit_arguments["validation_data"] = (
            _reader_inputs(validation),
            validation.targets(READER_MAX_LENGTH),
        )
        own_callbacks.append(_exact_accuracy_callback(validation.strips, validation.texts))
    report(
        f"[4/6] training{label} {config.epochs} epochs at batch size {config.batch_size}"
        + _describe_validation(config, held_out).replace("images", "digits")
    )
    timer, epoch_seconds = _epoch_timer()
    keep_best = _keep_best(config.early_stopping)
    started = time.perf_counter()
    history = model.fit(
        callbacks=[timer, *own_callbacks, keep_best, *callbacks], verbose=verbose, **fit_arguments
    )
    train_seconds = time.perf_counter() - started
    if keep_best.best_epoch:
        report(
            f"      kept epoch {keep_best.best_epoch} (lowest validation loss "
            f"{keep_best.best_loss:.4f})"
        )
    return _Member(
        model,
        training,
        validation,
        {key: [float(v) for v in values] for key, values in history.history.items()},
        epoch_seconds,
        train_seconds,
        keep_best.best_epoch or None,
        keep_best.stopped_after or None,
    )


def _reader_inputs(numbers: synthetic.Numbers, count: int | None = None) -> np.ndarray:
    """The first ``count`` (default all) strips as the reader takes them: (N, 28, 224, 1)."""
    return numbers.strips[:count, ..., None].astype("float32") / 255


def _reader_loss(members: list[_Member], numbers: synthetic.Numbers, count: int) -> float:
    """CTC loss on the first ``count`` of ``numbers``: of the reader, or the mean of its
    members' (an ensemble's output is its members' steps side by side: no loss of its own)."""
    inputs = _reader_inputs(numbers, count)  # not all 120,000 made float first (3 GB)
    targets = numbers.targets(READER_MAX_LENGTH)[:count]
    return float(np.mean([member.model.evaluate(inputs, targets, verbose=0) for member in members]))


def _starting_readers(config: TrainConfig) -> tuple[list[keras.Model | None], dict | None]:
    """Per member, the reader it starts from: the members of the run ``config.start_from``
    (as many as ``config.members``), or None each (new weights); and that run, described
    (``TrainResult.started_from``)."""
    from pathlib import Path

    from digitlab import artifacts

    if not config.start_from:
        return [None] * config.members, None
    run = artifacts.load_run(Path(config.start_from))
    if run.manifest.get("reads") != "number":
        raise DigitlabError(
            f"{run.folder} is a {run.manifest.get('model')} (one digit per image), not a number "
            "reader to train further"
        )
    starts = models.reader_members(run.model)
    if len(starts) != config.members:
        raise DigitlabError(
            f"{run.folder} is a reader of {len(starts)} member(s), not {config.members}: "
            f"train it further with --members {len(starts)}"
        )
    metrics = run.manifest.get("metrics") or {}
    return starts, {
        "run": str(run.folder),
        "created": run.manifest.get("created"),
        "test_accuracy": metrics.get("test_accuracy"),
        "started_from": run.manifest.get("started_from"),
    }


def train_reader(
    config: TrainConfig,
    data: Arrays,
    report: Report = print,
    verbose: int = 2,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    data_origin: str = "",
) -> TrainResult:
    """Compose numbers from the digits of ``data``, train the number reader on them with CTC,
    and read the test numbers (composed from the test digits), reporting each step.

    With ``config.members`` > 1, that many readers, each exactly the one ``train_reader``
    trains alone with seed ``config.seed + k`` (its own numbers and starting weights), joined
    into one model (``models.reader_ensemble``) that reads as ``Predictor.read_strips`` does.
    With ``config.start_from`` (a reader run), member k starts from that run's member k
    (``models.reader_members``) instead of new weights, and is trained further on its numbers.
    """
    from digitlab import synthetic

    (x_train, y_train), (x_test, y_test) = data
    _check(config, len(x_train))
    if config.members < 1:
        raise DigitlabError("a reader needs at least 1 member")
    report(
        f"[1/6] loaded {data_origin or config.dataset}: train {x_train.shape} {x_train.dtype}, "
        f"test {x_test.shape}: the digits the numbers are composed from"
    )
    starts, started_from = _starting_readers(config)
    test = synthetic.test_numbers(x_test, y_test)
    members = []
    for index, start in enumerate(starts):
        label = f" (member {index + 1} of {config.members})" if config.members > 1 else ""
        member_config = dataclasses.replace(config, seed=config.seed + index, members=1)
        members.append(
            _train_member(
                member_config, x_train, y_train, report, verbose, callbacks, label, test, start
            )
        )
    if len(members) == 1:
        model = members[0].model
    else:
        model = models.reader_ensemble([member.model for member in members])
        report(
            f"      {len(members)} readers side by side in one model ({model.name}, "
            f"{model.count_params():,} parameters), each reading every number; where they "
            "differ, the reading they find likeliest together"
        )
    # the train figures: member 1's training numbers (the other members trained on their own)
    training = members[0].training
    readings, confidences, _ = read_numbers(model, test.strips)
    scored = slice(0, READER_TRAIN_SCORED)
    train_readings, _, _ = read_numbers(model, training.strips[scored])
    calibration = members[0].validation or training
    _, _, calibration_scores = read_numbers(model, calibration.strips[:NUMBER_CALIBRATION])
    rejection = calibrate_number_rejection(np.asarray(calibration_scores))
    test_scores = evaluation.number_scores(test.texts, readings)
    train_scores = evaluation.number_scores(training.texts[scored], train_readings)
    test_loss = _reader_loss(members, test, len(test.texts))
    train_loss = _reader_loss(members, training, READER_TRAIN_SCORED)
    history = dict(members[0].history)
    for number, member in enumerate(members[1:], start=2):
        history.update({f"{key}_member_{number}": values for key, values in member.history.items()})
    shown = min(PREDICTIONS_SHOWN, len(test.texts))
    result = TrainResult(
        model=model,
        config=config,
        history=history,
        epoch_seconds=[seconds for member in members for seconds in member.epoch_seconds],
        train_seconds=sum(member.train_seconds for member in members),
        metrics={
            "test_loss": test_loss,
            "test_accuracy": test_scores["exact"],
            "test_digit_accuracy": test_scores["digit_accuracy"],
            "train_loss": train_loss,
            "train_accuracy": train_scores["exact"],
            "train_digit_accuracy": train_scores["digit_accuracy"],
        },
        first_confidences=confidences[:shown],
        best_epoch=members[0].best_epoch,
        stopped_after=members[0].stopped_after,
        numbers=evaluation.NumberEvaluation(test.strips, test.texts, readings, confidences),
        rejection=rejection,
        started_from=started_from,
    )
    report(f"[5/6] read the first {shown} test numbers:")
    for text, reading in zip(test.texts[:shown], readings[:shown], strict=True):
        report(f"      {text:>10} read {reading:<10} {'right' if reading == text else 'WRONG'}")
    gap = result.overfitting_gap
    report(
        f"[6/6] evaluated on all {len(test.texts):,} test numbers:\n"
        f"      test  exact {test_scores['exact']:.4f}  digits {test_scores['digit_accuracy']:.4f}"
        f"  (loss {test_loss:.4f})\n"
        f"      train exact {train_scores['exact']:.4f}  digits "
        f"{train_scores['digit_accuracy']:.4f}  (loss {train_loss:.4f}, {READER_TRAIN_SCORED:,} "
        "training numbers)\n"
        f"      gap   {gap:+.4f} -> {evaluation.overfitting_verdict(gap)}\n"
        f"      'not a number' below a reading score of {rejection['threshold']:.4f}: "
        f"{NUMBER_REJECTION_RATE:.0%} of {rejection['calibration_numbers'][0]:,} "
        + ("validation" if members[0].validation else "training")
        + " numbers"
    )
    epochs = ", ".join(f"{seconds:.2f}" for seconds in result.epoch_seconds)
    report(f"trained in {result.train_seconds:.1f} s (epochs: {epochs} s)")
    return result


def train(
    config: TrainConfig,
    data: Arrays,
    report: Report = print,
    verbose: int = 2,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    data_origin: str = "",
    job: Job | None = None,
) -> TrainResult:
    """Build, compile, fit and evaluate ``config.model`` on ``data``, reporting each step.

    ``data_origin`` says where the data came from in step 1 (``DataFiles.origin``).
    ``callbacks`` run after digitlab's own (the epoch timer, keeping the best epoch).
    ``job``: train data-parallel over this distributed job's devices
    (``distributed.join``); each process fits on its shard of every batch.
    """
    import keras

    job = job or Job()
    if models.get(config.model).reads == "number":
        if job.distributed:
            raise DigitlabError("the number reader trains in one process: drop --distributed")
        return train_reader(config, data, report, verbose, callbacks, data_origin)
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
    fit_images, fit_labels = x_train[:fit_count], y_train[:fit_count]
    if config.augment and (config.hollow_share or config.photographed_share):
        fit_images, fit_labels = _with_read_back_digits(fit_images, fit_labels, config, report)
    steps_per_epoch = -(-len(fit_images) // config.batch_size)

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

    kind = models.get(config.model)
    input_shape = kind.input_shape
    train_inputs = models.prepare(x_train, input_shape)  # (N, 28, 28) uint8 -> float32 in [0, 1]
    test_inputs = models.prepare(x_test, input_shape)
    report(
        f"[3/6] scaled pixels to float32 in [0, 1]: train {train_inputs.shape}, "
        f"test {test_inputs.shape}"
    )
    non_digits = validation_non_digits = None
    if kind.rejects:
        non_digits, validation_non_digits = _non_digits(config, fit_count, held_out, report)

    # The validation images come from the end of the training set, as Keras' validation_split.
    # In a distributed job each process fits on its shard (all of it with one process), in
    # batches of its share of the batch size.
    shard = job.shard
    local_config = dataclasses.replace(config, batch_size=job.per_process_batch(config.batch_size))
    fit_arguments: dict = {"epochs": config.epochs}
    if held_out:
        validation = (train_inputs[fit_count:], y_train[fit_count:])
        if validation_non_digits is not None:
            validation = _with_non_digits(*validation, validation_non_digits, input_shape)
        fit_arguments["validation_data"] = tuple(shard(part) for part in validation)
        fit_arguments["validation_batch_size"] = local_config.batch_size
    if config.augment:
        fit_arguments["x"] = augmented_batches(
            shard(fit_images), shard(fit_labels), local_config, input_shape,
            None if non_digits is None else shard(non_digits), job.local_device_count,
        )  # fmt: skip
    else:
        fit_arguments |= {
            "x": shard(train_inputs[:fit_count]),
            "y": shard(y_train[:fit_count]),
            "batch_size": local_config.batch_size,
            "shuffle": True,
        }
    report(
        f"[4/6] training {config.epochs} epochs at batch size {config.batch_size}"
        + (
            f" (data-parallel: {local_config.batch_size} per process on "
            f"{job.process_count} process(es), {job.device_count} devices)"
            if job.distributed
            else ""
        )
        + _describe_augmentation(config)
        + _describe_validation(config, held_out)
    )
    timer, epoch_seconds = _epoch_timer()
    keep_best = _keep_best(config.early_stopping)
    started = time.perf_counter()
    try:
        history = model.fit(
            callbacks=[timer, keep_best, *distributed.fit_callbacks(job), *callbacks],
            verbose=verbose,
            **fit_arguments,
        )
    except Exception as error:
        if job.process_count > 1 and "jax" in type(error).__module__.lower():
            raise distributed.stopped(error, job) from None
        raise
    train_seconds = time.perf_counter() - started
    if job.distributed:
        model = distributed.local_copy(model, lambda: models.build(config.model))
    if keep_best.stopped_after:
        report(f"      stopped early after epoch {keep_best.stopped_after}")
    if keep_best.best_epoch:
        report(
            f"      kept epoch {keep_best.best_epoch} (lowest validation loss "
            f"{keep_best.best_loss:.4f})"
        )

    # One pass over the test set gives the metrics, the first 20 predictions and the report's
    # data (Keras' evaluate() and predict() would each make their own).
    # A model with a "not a digit" output is scored on the digits' probabilities (its answer
    # is still the likeliest digit; whether it looks like a digit is a separate flag).
    outputs = model.predict(test_inputs, verbose=0, batch_size=EVALUATE_BATCH_SIZE)
    probabilities, _ = models.split_rejection(outputs)
    test_loss, test_accuracy = score(probabilities, y_test)
    shown = min(PREDICTIONS_SHOWN, len(test_inputs))
    # All training images, as the tutorial measures them: unaugmented, held-out ones included.
    train_outputs = model.predict(train_inputs, verbose=0, batch_size=EVALUATE_BATCH_SIZE)
    train_loss, train_accuracy = score(models.split_rejection(train_outputs)[0], y_train)

    # Calibrated on digits the model did not train on when there are any (else on all of them),
    # as they are and, for a model with a "not a digit" output, photographed too.
    # Each scored as predict scores it: averaged over the digit moved a pixel each way.
    def outputs_for(digits: np.ndarray) -> np.ndarray:
        inputs = models.prepare(digits, input_shape)
        return model.predict(inputs, verbose=0, batch_size=EVALUATE_BATCH_SIZE)

    unmoved = train_outputs[fit_count:] if held_out else train_outputs  # already read
    calibration_digits = x_train[fit_count:] if held_out else x_train
    scores = [models.shifted_scores(outputs_for, calibration_digits, as_given=unmoved)]
    if kind.rejects and held_out:
        photos = _photographed(x_train[fit_count:], config.seed, report)
        scores.append(models.shifted_scores(outputs_for, photos))
    rejection = calibrate_rejection(scores, kind.rejects)
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
        rejection=rejection,
        distributed=job.describe() if job.distributed else None,
    )
    _report_results(result, y_test, len(x_train), report)
    return result


# Of the held-out digits, the share the "not a digit" rule may reject: half of the 1% that
# issue #11 allows on MNIST's test digits, leaving room for photographed digits, which score
# lower.
REJECTION_RATE = 0.005
NON_DIGITS_TRAINED = 12_000  # drawn non-digits, re-augmented every epoch
NON_DIGITS_VALIDATED = 1_000


# Of a reader's calibration numbers (its first member's validation numbers, composed from
# held-out digits, 15% photographed), the share the "not a number" rule may reject. Measured
# with the shipped reader on benchmarks/number_reading.py's sets: at 1% of numbers, 79% of
# words typed in handwriting fonts are "not a number", at 0.5% 49%.
NUMBER_REJECTION_RATE = 0.01
NUMBER_CALIBRATION = 2_000  # numbers read to calibrate it (at most)


def calibrate_number_rejection(scores: np.ndarray) -> dict:
    """A number reader's "not a number" rule: a reading whose score
    (``models.reading_score``) is below ``threshold``, which NUMBER_REJECTION_RATE of the
    calibration numbers' readings are."""
    return {
        "score": "reading score (probability per digit and member)",
        "threshold": float(np.quantile(scores, NUMBER_REJECTION_RATE)),
        "rejected_share_of_calibration_numbers": NUMBER_REJECTION_RATE,
        "calibration_numbers": [int(len(scores))],
    }


def calibrate_rejection(digit_scores: list[np.ndarray], rejects: bool) -> dict:
    """The rule that says "not a digit": a score below ``threshold``.

    The score is 1 - P(not a digit) for a model with that output, else the top probability,
    averaged over the digit moved a pixel each way (``models.shifted_scores``). The threshold rejects at most REJECTION_RATE of each set of ``digit_scores`` (held-out
    digits as they are, and photographed).
    """
    threshold = min(float(np.quantile(scores, REJECTION_RATE)) for scores in digit_scores)
    return {
        "score": "1 - P(not a digit)" if rejects else "top probability",
        # the score is averaged over the digit moved by each (rows down, columns right)
        "averaged_over_shifts": [list(shift) for shift in models.SCORE_SHIFTS],
        "threshold": threshold,
        "rejected_share_of_calibration_digits": REJECTION_RATE,
        "calibration_digits": [int(len(scores)) for scores in digit_scores],
    }


PHOTOGRAPHED_CALIBRATION = 2_000  # held-out digits photographed for the calibration


def _photographed(digits: np.ndarray, seed: int, report: Report) -> np.ndarray:
    from digitlab import synthetic

    started = time.perf_counter()
    (photos, _), kept = made(synthetic.photographed_digits, digits[:PHOTOGRAPHED_CALIBRATION], seed)
    report(
        f"      photographed {len(photos):,} held-out digits to calibrate 'not a digit' "
        f"({_took(started, kept)})"
    )
    return photos


def _took(started: float, kept: bool) -> str:
    """How long making some training data took, or that an earlier training made it."""
    seconds = f"{time.perf_counter() - started:.0f} s"
    return f"{seconds}, kept from an earlier training" if kept else seconds


def _non_digits(config: TrainConfig, fit_count: int, held_out: int, report: Report):
    """Non-digits to train on (and to validate with, when digits are held out)."""
    from digitlab import synthetic

    started = time.perf_counter()
    trained, kept = made(synthetic.prepared_non_digits, NON_DIGITS_TRAINED, config.seed)
    validated = None
    if held_out:
        validated, _ = made(synthetic.prepared_non_digits, NON_DIGITS_VALIDATED, config.seed + 1)
    report(
        f"      drew {len(trained):,} non-digits (letters, scribbles, shapes, noise) for the "
        f"'not a digit' output, {config.non_digit_share:.0%} of each batch, in "
        f"{_took(started, kept)}"
    )
    return trained, validated


def _with_read_back_digits(
    images: np.ndarray, labels: np.ndarray, config: TrainConfig, report: Report
) -> tuple[np.ndarray, np.ndarray]:
    """The training digits plus ``config.hollow_share`` more written with hollow strokes and
    ``config.photographed_share`` more photographed, each some of them again, read back
    through preprocessing as a user's image of them would be; made once before training, over
    processes (in the batches, one thread would take minutes per epoch)."""
    from digitlab import synthetic

    rng = np.random.default_rng(config.seed)
    kinds = [
        (config.hollow_share, "with hollow strokes", synthetic.hollow_digits_read_back),
        (config.photographed_share, "photographed on paper", synthetic.photographed_digits),
    ]
    more_images, more_labels = [images], [labels]
    for number, (share, how, read_back) in enumerate(kinds):
        if not share:
            continue
        started = time.perf_counter()
        chosen = rng.choice(len(images), round(share * len(images)), replace=False)
        (read, kept), from_before = made(read_back, images[chosen], config.seed + number)
        report(
            f"      wrote {len(read):,} training digits {how} and read them back through "
            f"preprocessing, as more digits to train on, in {_took(started, from_before)}"
        )
        more_images.append(read)
        more_labels.append(labels[chosen[kept]])
    return np.concatenate(more_images), np.concatenate(more_labels)


def _with_non_digits(inputs, labels, non_digits: np.ndarray, input_shape) -> tuple:
    return (
        np.concatenate([inputs, models.prepare(non_digits, input_shape)]),
        np.concatenate([labels, np.full(len(non_digits), NUM_CLASSES, labels.dtype)]),
    )


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
    described = ", each batch randomly shifted, rotated and rescaled"
    if config.handwriting_share:
        described += (
            f", {config.handwriting_share:.0%} of its images as other writers, pens and scanners "
            "would give them"
        )
    if config.hollow_share:
        described += f", {config.hollow_share:.0%} more digits with hollow strokes read back"
    if config.photographed_share:
        described += f", {config.photographed_share:.0%} more photographed and read back"
    if plain == 0:
        return described
    return f"{described} (the last {plain} epoch{'s' if plain > 1 else ''}: the digits as they are)"


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
