"""The model kinds digitlab trains, one registered ``ModelKind`` each.

A kind carries everything that differs between models: its builder (a plain
``keras.Sequential``), the input shape it takes, its training defaults with their reasons, and
the line ``digitlab train --help`` shows. The CLI, the trainer and the run folders read it from
here; adding a model is one ``register(ModelKind(...))`` below (plus ``runtime`` support if it
brings a layer kind the NumPy runtime does not know yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError
from digitlab.config import IMAGE_SIDE, NUM_CLASSES, TrainConfig

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


def _convolution(filters: int, kernel_size: int, strides: int = 1, padding: str = "same") -> list:
    """Conv2D -> BatchNormalization -> ReLU (no bias: batch norm's offset does its job)."""
    import keras

    return [
        keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ]


def build_cnn(dropout_rate: float = 0.1) -> keras.Sequential:
    """A small convolutional network, shaped for a 2-core CPU (about 1.5 M multiply-adds per
    digit, 60% of keras.io's convnet).

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
            keras.layers.Flatten(),  # -> (3136,)
            keras.layers.Dense(128, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(dropout_rate),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="cnn",
    )


register(
    ModelKind(
        name="cnn",
        description="convolutions with batch norm, dropout, augmentation and a learning-rate "
        "schedule, 12 epochs: 99.5% on MNIST in about 3 minutes on 2 cores",
        build=build_cnn,
        input_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
        defaults={
            "epochs": 12,  # 15 were no better in probes (99.39% vs 99.47%); ~13 s each on 2 cores
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


# ------------------------------------------------------------------------ shared by the kinds


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


def prepare(images: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Scale and reshape uint8 digits for a model.

    (N, 28, 28) uint8 -> (N, *input_shape) float32 in [0, 1], e.g. (N, 784) for the MLP.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DigitlabError(f"expected images of shape (N, 28, 28), got {images.shape}")
    return (images.astype("float32") / 255.0).reshape((images.shape[0], *input_shape))
