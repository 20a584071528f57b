"""The model kinds digitlab trains, one registered ``ModelKind`` each.

A kind carries everything that differs between models: its builder (a plain
``keras.Sequential``), the input shape it takes, its training defaults with their reasons, and
the line ``digitlab train --help`` shows. The CLI, the trainer and the run folders read it from
here; adding a model is one ``register(ModelKind(...))`` below (plus ``runtime`` support if it
brings a layer kind the NumPy runtime does not know yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError
from digitlab.config import IMAGE_SIDE, NUM_CLASSES, STRIP_WIDTH, TrainConfig

if TYPE_CHECKING:  # keras is imported inside the builders: it takes seconds to import
    import keras


@dataclass(frozen=True)
class ModelKind:
    name: str
    description: str  # one line for `digitlab train --help`
    build: Callable[[], keras.Sequential]
    input_shape: tuple[int, ...]  # what one digit looks like to the model
    # TrainConfig fields that differ from the tutorial's defaults, each for a measured reason
    defaults: dict = field(default_factory=dict)
    reads: str = "digit"  # "digit": one 28x28 digit; "number": a whole written number (a strip)
    # An 11th output, "not a digit", trained on things that are not digits (letters, scribbles,
    # shapes, noise: synthetic.non_digit_drawings)
    rejects: bool = False

    def config(self, **overrides) -> TrainConfig:
        """This kind's TrainConfig: its defaults, then the ``overrides`` that are not None."""
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return TrainConfig(**{**self.defaults, **chosen, "model": self.name})

    def default(self, setting: str):
        return self.config().to_dict()[setting]


MODELS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    MODELS[kind.name] = kind
    return kind


def get(name: str) -> ModelKind:
    if name not in MODELS:
        raise DigitlabError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str) -> keras.Sequential:
    return get(name).build()


# ------------------------------------------------------------------------------- the kinds


def build_mlp() -> keras.Sequential:
    """The tutorial's model exactly: Dense(512, relu) -> Dense(10, softmax) on 784 inputs."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(IMAGE_SIDE * IMAGE_SIDE,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mlp",
    )


register(
    ModelKind(
        name="mlp",
        description="the tutorial's Dense(512) -> Dense(10), 5 epochs, ~98% on MNIST in ~10 s",
        build=build_mlp,
        input_shape=(IMAGE_SIDE * IMAGE_SIDE,),
    )
)


def _convolution(
    filters: int,
    kernel_size: int | tuple[int, int],
    strides: int = 1,
    padding: str = "same",
    groups: int = 1,
) -> list:
    """Conv2D -> BatchNormalization -> ReLU (no bias: batch norm's offset does its job)."""
    import keras

    return [
        keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, groups=groups, use_bias=False
        ),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ]


def build_cnn(dropout_rate: float = 0.1) -> keras.Sequential:
    """A small convolutional network, shaped for a 2-core CPU (about 4.7 M multiply-adds per
    digit, 1.9x keras.io's convnet). Its third convolution, at 7x7, was added in the eleventh
    session: without it (1.7 M) the CNN read fewer test digits (mean of seeds 0-2: 99.46%
    against 99.53%; seed 0: 99.62%) and let more letters through as digits, for half the time
    per epoch (docs/performance.md). Its dense layer is 192 wide: at 128 the "not a digit"
    output, learnt from ten font families, textured shapes and scribbles, cost the digits
    0.05-0.1 points of test accuracy.

    It downsamples with strided convolutions, not max pooling: on JAX's CPU backend the
    gradient of max pooling is slow, and a stack like this one trained 2-3x faster per epoch
    than the same sizes with pooling (docs/performance.md). Dropout is light because the
    augmentation already regularises: with 0.3 and stronger augmentation it underfit (99.4%).
    """
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1)),
            *_convolution(32, 5, strides=2),  # (28, 28, 1) -> (14, 14, 32)
            *_convolution(64, 3, strides=2),  # -> (7, 7, 64)
            *_convolution(96, 3),  # -> (7, 7, 96)
            keras.layers.Flatten(),  # -> (4704,)
            keras.layers.Dense(192, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(dropout_rate),
            keras.layers.Dense(NUM_CLASSES + 1, activation="softmax"),  # the digits, "not a digit"
        ],
        name="cnn",
    )


register(
    ModelKind(
        name="cnn",
        description="convolutions with batch norm, dropout, augmentation (other writers' pens, "
        "scans and slants too), a learning-rate schedule and a 'not a digit' output, 12 "
        "epochs: 99.5-99.6% on MNIST in about 7 minutes on 2 cores (an Intel Xeon; more on slower "
        "ones)",
        build=build_cnn,
        input_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
        rejects=True,
        defaults={
            # of the digits in a batch, this share as another writer would have written them
            # (augment.HANDWRITING_CONDITIONS: low resolution, blur, marker, slant, ...)
            "handwriting_share": 0.4,
            # and 11% more digits, hollow strokes read back through preprocessing
            "hollow_share": 0.11,
            # and 10% more photographed on paper and read back (photographed digits were the
            # ones the "not a digit" rule rejected most)
            "photographed_share": 0.1,
            "non_digit_share": 0.12,  # non-digits added per digit, labelled "not a digit"
            "epochs": 12,  # 14-15 were no better in probes (99.39-99.41%); ~30 s each on 2 cores
            "batch_size": 256,  # fewer, larger steps: 2 cores ran it ~15% faster than 128
            "validation_split": 1 / 12,  # 5,000 of MNIST's 60,000: the classic 55,000/5,000
            "learning_rate": 0.003,  # peak of the schedule; batch norm keeps it stable
            "schedule": "warmup-cosine",
            "augment": True,
            # the last 2 of 12 epochs unaugmented: 99.47% -> 99.60% (seed 0), 99.50% (seed 1)
            "plain_final_epochs": 2,
        },
    )
)


# The number reader's output: per time step (4 strip columns), "no digit here" (CTC's blank,
# class 0) or a digit d (class d + 1).
READER_CLASSES = NUM_CLASSES + 1
READER_STEP_PIXELS = 4  # strip columns per time step: two stride-2 convolutions


def build_reader(members: int = 1) -> keras.Sequential:
    """A convolutional number reader trained with CTC (connectionist temporal classification).

    It reads a whole strip (a written number 20 px tall, ``preprocess.fit_strip``) into one
    prediction per 4 columns, so digits need not be cut apart first: touching and overlapping
    digits and narrow 1s are read where blob segmentation fails. Shi et al.'s CRNN puts a
    recurrent layer on top; convolutions along the line (each step sees ~60 px, three digits)
    did as well here and run in the NumPy runtime.

    (28, 224, 1) -> (56, 11): per time step, blank or a digit. About 1.6 ms per number per
    training step on 2 cores.

    With ``members`` > 1: that many readers side by side in one model (``reader_ensemble``),
    each in its own block of channels (grouped convolutions): (28, 224, 1) -> (56, 11 *
    members), each member's per-step probabilities in turn (``member_steps`` splits them).
    """
    import keras

    steps = STRIP_WIDTH // READER_STEP_PIXELS

    def convolution(filters: int, kernel_size, **settings) -> list:
        return _convolution(filters * members, kernel_size, groups=members, **settings)

    head = (
        [keras.layers.Conv2D(READER_CLASSES, 1, activation="softmax"),  # -> (1, 56, 11)
         keras.layers.Reshape((steps, READER_CLASSES))]
        if members == 1
        else [keras.layers.Conv2D(READER_CLASSES * members, 1, groups=members),
              keras.layers.Reshape((steps, members, READER_CLASSES)),
              keras.layers.Activation("softmax"),  # each member's own
              keras.layers.Reshape((steps, members * READER_CLASSES))]
    )  # fmt: skip
    return keras.Sequential(
        [
            keras.Input(shape=(IMAGE_SIDE, STRIP_WIDTH, 1)),
            # few filters at full resolution: there the activations, not the weights, cost time
            *_convolution(8 * members, 3, strides=2),  # -> (14, 112, 8)
            *convolution(32, 3, strides=2),  # -> (7, 56, 32)
            # each column of 7 cells -> 96 features: the height folded into the channels
            *convolution(96, (IMAGE_SIDE // 4, 1), padding="valid"),  # -> (1, 56, 96)
            *convolution(96, (1, 5)),  # along the line: each step sees its neighbours
            *convolution(96, (1, 5)),
            keras.layers.Dropout(0.1),
            *head,
        ],
        name="reader" if members == 1 else f"readers_{members}",
    )


def reader_ensemble(readers: Sequence[keras.Model]) -> keras.Sequential:
    """Trained readers (``build_reader()`` each) -> one model that runs them all at once
    (``build_reader(len(readers))``): each layer's weights side by side."""
    ensemble = build_reader(len(readers))
    weighted = [[layer for layer in model.layers if layer.weights] for model in readers]
    targets = [layer for layer in ensemble.layers if layer.weights]
    for target, *sources in zip(targets, *weighted, strict=True):
        target.set_weights(
            [
                np.concatenate(parts, axis=-1)  # filters (or channels) are the last axis
                for parts in zip(*(source.get_weights() for source in sources), strict=True)
            ]
        )
    return ensemble


def reader_members(model: keras.Model) -> list[keras.Sequential]:
    """A reader's members, each its own ``build_reader()`` with its weights: the inverse of
    ``reader_ensemble`` (a reader of one member comes back as one)."""
    count = model.output_shape[-1] // READER_CLASSES
    if model.output_shape[-1] != count * READER_CLASSES or not model.name.startswith("reader"):
        raise DigitlabError(f"{model.name} is not a number reader")
    members = [build_reader() for _ in range(count)]
    sources = [layer for layer in model.layers if layer.weights]
    try:
        for index, member in enumerate(members):
            targets = [layer for layer in member.layers if layer.weights]
            for target, source in zip(targets, sources, strict=True):
                target.set_weights(
                    [np.split(weights, count, axis=-1)[index] for weights in source.get_weights()]
                )
    except ValueError:  # other layers, or other shapes of them
        raise DigitlabError(f"{model.name} is not shaped like digitlab's number reader") from None
    return members


register(
    ModelKind(
        name="reader",
        description="reads whole written numbers (1-10 digits, touching ones too), trained "
        "with CTC on numbers composed from MNIST digits, in about 8 minutes on 2 cores",
        build=build_reader,
        input_shape=(IMAGE_SIDE, STRIP_WIDTH, 1),
        reads="number",
        defaults={
            "epochs": 6,
            "batch_size": 64,
            "validation_split": 1 / 12,  # the digits of the validation numbers, as the CNN's
            # more touching gaps than its test numbers have (30%): measured on
            # benchmarks/number_reading.py (a third touching), 0.45 against 0.3 read 93.3%
            # against 90.4% of clean numbers of up to 6 digits exactly
            "touching_share": 0.45,
            # no numbers by other writers (handwriting_share): 15% of them read outlined numbers
            # 40% -> 65% exactly, but clean ones of up to 6 digits 96.2% -> 93.1%
            # (benchmarks/number_reading.py, checked by the CNN; 120,000 numbers, seed 0).
            # Nor with hollow strokes (hollow_share): 10% of them, in all three readers of the
            # ready one, read clean numbers of up to 6 digits 95.72% -> 95.28%, photographed
            # 93.79% -> 93.46%, font numbers the same (174 of 192; fifteenth session)
            "learning_rate": 0.003,
            "schedule": "warmup-cosine",
        },
    )
)


def ctc_loss(targets, probabilities):
    """CTC loss of the reader's softmax output against digit targets (d + 1, padded with 0).

    Keras' own CTC loss expects logits (it takes a log-softmax first, which flattens
    probabilities into near-uniform ones and stalls training); log-probabilities are logits
    of the same distribution. (N, max_length) int, (N, steps, 11) -> (N,) losses.
    """
    from keras import ops

    targets = ops.cast(targets, "int32")
    count, steps = ops.shape(probabilities)[0], ops.shape(probabilities)[1]
    target_lengths = ops.sum(ops.cast(ops.not_equal(targets, 0), "int32"), axis=-1)
    output_lengths = steps * ops.ones((count,), dtype="int32")
    log_probabilities = ops.log(ops.clip(probabilities, 1e-7, 1.0))
    return ops.ctc_loss(targets, log_probabilities, target_lengths, output_lengths, mask_index=0)


@dataclass
class ReadDigit:
    label: int
    step: int  # the time step where the reader is surest of it
    probabilities: np.ndarray  # (10,) the digits' probabilities at that step, summing to 1


def ctc_decode(probabilities: np.ndarray) -> list[list[ReadDigit]]:
    """The reader's output -> the digits read, by best path (greedy) CTC decoding.

    (N, steps, 11) -> per number, its digits left to right: the most likely class at each
    step, repeats merged, blanks dropped. Each digit keeps the step where it was surest, and
    there the digits' probabilities (the blank's share taken out).
    """
    numbers = []
    for steps in np.asarray(probabilities):
        best = steps.argmax(axis=1)
        digits: list[ReadDigit] = []
        previous = 0
        for step, label in enumerate(best):
            if label != 0 and label == previous and digits:
                if steps[step, label] > steps[digits[-1].step, label]:
                    digits[-1].step = step
            elif label != 0:
                digits.append(ReadDigit(int(label) - 1, step, np.zeros(NUM_CLASSES)))
            previous = label
        for digit in digits:
            shares = steps[digit.step, 1:]
            digit.probabilities = shares / max(float(shares.sum()), 1e-12)
        numbers.append(digits)
    return numbers


# The reader reads each strip three times, as given and moved a row up and down, and its
# per-step probabilities are averaged (each member's own, in a reader of several). Measured in
# the twelfth session with the one-member reader then shipped and the CNN, on
# benchmarks/number_reading.py's 600 numbers (and on another 600 + 96 made with seed 1): clean
# numbers of up to 6 digits 96.2% -> 96.7% exact (94.5% -> 96.1%), photographed 93.0% -> 93.3%
# (91.5% -> 92.8%), handwriting fonts 87.5% -> 91.7% (79.2% -> 84.4%). Moved by 4 columns (a
# step) it gained nothing; averaging the CNN that checks it over shifts, nothing either.
READER_ROW_SHIFTS = (0, 1, -1)


def read_steps(forward: Callable[[np.ndarray], np.ndarray], strips: np.ndarray) -> np.ndarray:
    """The reader's per-step probabilities, averaged over its strips moved by READER_ROW_SHIFTS.

    (N, 28, 224, 1) float32 strips -> (N, 56, 11). The number fills the strip's middle 20 rows,
    so a shift of a row loses no ink.
    """
    strips = np.asarray(strips)
    shifted = np.zeros((len(READER_ROW_SHIFTS), *strips.shape), strips.dtype)
    for copy, rows in zip(shifted, READER_ROW_SHIFTS, strict=True):
        if rows >= 0:
            copy[:, rows:] = strips[:, : strips.shape[1] - rows]
        else:
            copy[:, :rows] = strips[:, -rows:]
    outputs = np.asarray(forward(shifted.reshape(-1, *strips.shape[1:])))
    return outputs.reshape(len(READER_ROW_SHIFTS), len(strips), *outputs.shape[1:]).mean(axis=0)


def ctc_log_likelihood(probabilities: np.ndarray, digits: Sequence[int]) -> float:
    """log P(the reader's output reads ``digits``), summed over every alignment of them to
    its steps (CTC's forward algorithm; ``ctc_decode``'s best path is one alignment).

    (steps, 11) probabilities, blank first; digits 0-9 -> a log-probability, -inf if no
    alignment fits.
    """
    return float(_ctc_log_likelihoods(np.asarray(probabilities)[None], digits)[0])


def _ctc_log_likelihoods(probabilities: np.ndarray, digits: Sequence[int]) -> np.ndarray:
    """``ctc_log_likelihood`` of each of several outputs at once: (members, steps, 11) ->
    (members,). One pass over the steps for all members: the loop over steps is the cost."""
    log_probabilities = np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-30))
    if len(digits) == 0:  # one alignment: blank at every step
        return log_probabilities[:, :, 0].sum(axis=1)
    labels = np.zeros(2 * len(digits) + 1, np.intp)  # blank, d1, blank, d2, ..., blank
    labels[1::2] = np.asarray(digits, np.intp) + 1
    # a digit may follow the digit before it without a blank between them, unless they repeat
    may_skip = np.zeros(len(labels), bool)
    may_skip[3::2] = labels[3::2] != labels[1:-2:2]
    emitted = log_probabilities[:, :, labels]  # (members, steps, states)
    # alpha with two unreachable states in front: the state before and two before, as views
    padded = np.full((len(emitted), len(labels) + 2), -np.inf)
    alpha = padded[:, 2:]
    alpha[:, :2] = emitted[:, 0, :2]
    for step in range(1, emitted.shape[1]):
        skipped = np.where(may_skip, padded[:, :-2], -np.inf)
        alpha[:] = np.logaddexp(np.logaddexp(alpha, padded[:, 1:-1]), skipped) + emitted[:, step]
    return np.logaddexp(alpha[:, -1], alpha[:, -2])


def member_steps(outputs: np.ndarray) -> np.ndarray:
    """A reader's output -> each member's: (..., steps, 11 * members) -> (..., members, steps,
    11). One reader is one member."""
    outputs = np.asarray(outputs)
    members = outputs.shape[-1] // READER_CLASSES
    split = outputs.reshape(*outputs.shape[:-1], members, READER_CLASSES)
    return np.moveaxis(split, -2, -3)


def readers_log_likelihood(members: np.ndarray, digits: Sequence[int]) -> float:
    """log P(``digits``) by every member of a reader together: (members, steps, 11) -> the sum of
    their ``ctc_log_likelihood``. Each member sums over its own alignments, so members whose
    digits peak at different steps still agree on a text (averaging their steps would not:
    measured, two members averaged lost digits in 15% of the clean test numbers)."""
    return float(_ctc_log_likelihoods(members, digits).sum())


def reading_score(members: np.ndarray, digits: Sequence[int]) -> float:
    """How much a reading looks like a written number to the reader, in [0, 1]: the
    probability of its text (``readers_log_likelihood``) per member and per digit, a geometric
    mean (per member alone for a reading of no digits). A word or a doodle read as digits is an
    unlikely reading of every digit; a long number is not penalised for its length."""
    shares = len(members) * max(len(digits), 1)
    return float(np.exp(readers_log_likelihood(members, digits) / shares))


def readers_decode(members: np.ndarray) -> list[ReadDigit]:
    """Each member's best path (``ctc_decode``), then the one all members together find likeliest
    (``readers_log_likelihood``): (members, steps, 11) -> its digits."""
    readings = [number for steps in members for number in ctc_decode(steps[None])]
    if len(readings) == 1:
        return readings[0]
    texts = [tuple(digit.label for digit in reading) for reading in readings]
    if len(set(texts)) == 1:
        return readings[0]
    scores = [readers_log_likelihood(members, text) for text in texts]
    return readings[int(np.argmax(scores))]


# ------------------------------------------------------------------------ shared by the kinds


def split_rejection(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A digit model's output -> (the digits' probabilities, how much each input looks like a
    digit).

    (N, 11) from a model with a "not a digit" output: the first 10 renormalised, and 1 - the
    11th. (N, 10) from one without: as they are, and the top probability (a confident answer
    is the only sign such a model gives).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[-1] == NUM_CLASSES + 1:
        digits = probabilities[:, :NUM_CLASSES]
        digits = digits / np.maximum(digits.sum(axis=1, keepdims=True), 1e-12)
        return digits, 1 - probabilities[:, NUM_CLASSES]
    return probabilities, probabilities.max(axis=1)


# The "not a digit" score is averaged over the digit as given and moved a pixel each way (rows
# down, columns right). Measured in the fourteenth session with the shipped CNN, each way
# calibrated by training's own rule on the same held-out digits (benchmarks/not_a_digit.py,
# rejected: MNIST / photographed digits / Fashion / letters): one view 0.47 / 1.15 / 93.55 /
# 90.35%, five views 0.42 / 1.00 / 94.35 / 91.05%: a person's digit a pixel off scores about as
# high, a letter seen five ways gives its "not a digit" more chances.
SCORE_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(digits: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(N, H, W) images moved ``rows`` down and ``columns`` right; what comes in is 0."""
    digits = np.asarray(digits)
    height, width = digits.shape[1:3]
    moved = np.zeros_like(digits)
    moved[:, max(rows, 0) : height + min(rows, 0), max(columns, 0) : width + min(columns, 0)] = (
        digits[:, max(-rows, 0) : height - max(rows, 0), max(-columns, 0) : width - max(columns, 0)]
    )
    return moved


def shifted_scores(
    outputs_for: Callable[[np.ndarray], np.ndarray],
    digits: np.ndarray,
    shifts: Sequence[Sequence[int]] = SCORE_SHIFTS,
    as_given: np.ndarray | None = None,
) -> np.ndarray:
    """How much each digit looks like a digit (``split_rejection``'s score), averaged over the
    digit moved by each of ``shifts``. ``outputs_for``: (N, 28, 28) uint8 -> the model's
    outputs; (N, 28, 28) -> (N,). ``as_given``: the outputs for the digits unmoved, if the
    caller has them (not computed again)."""

    def outputs(rows: int, columns: int) -> np.ndarray:
        if (rows, columns) == (0, 0) and as_given is not None:
            return as_given
        return outputs_for(shifted(digits, rows, columns))

    return np.mean([split_rejection(outputs(*shift))[1] for shift in shifts], axis=0)


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.001,
    steps_per_execution: int = 1,
) -> None:
    """The tutorial's compile step: adam, sparse categorical cross-entropy, accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def inference(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """The model's forward pass as a NumPy function, safe to call from several threads while
    others save or call the same model.

    Not ``predict`` or ``predict_on_batch``: on JAX those take the weights out of the model
    (or hand their memory to the result) while they run, so another thread saving or calling
    the model at that moment finds no weights (two trainings saved at once did, in CI). On
    JAX the call is compiled once per batch shape with the weights as arguments, as fast as
    ``predict_on_batch``; other backends call the model eagerly."""
    import keras

    if keras.backend.backend() != "jax":
        return lambda inputs: keras.ops.convert_to_numpy(model(inputs, training=False))
    import jax

    @jax.jit
    def call(trainable, non_trainable, inputs):
        return model.stateless_call(trainable, non_trainable, inputs, training=False)[0]

    def forward(inputs: np.ndarray) -> np.ndarray:
        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]
        return np.asarray(call(trainable, non_trainable, inputs))

    return forward


def prepare(images: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Scale and reshape uint8 digits for a model.

    (N, 28, 28) uint8 -> (N, *input_shape) float32 in [0, 1], e.g. (N, 784) for the MLP.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DigitlabError(f"expected images of shape (N, 28, 28), got {images.shape}")
    return (images.astype("float32") / 255.0).reshape((images.shape[0], *input_shape))
