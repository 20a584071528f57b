"""The models: the tutorial's MLP and a stronger CNN. Builders return plain ``keras.Sequential``.

Each model names the input shape it takes; ``prepare`` turns MNIST's uint8 images into it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError

if TYPE_CHECKING:  # keras is imported inside the builders: it takes seconds to import
    import keras

NUM_CLASSES = 10


def build_mlp() -> keras.Sequential:
    """The tutorial's model exactly: Dense(512, relu) -> Dense(10, softmax) on 784 inputs."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mlp",
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
            keras.Input(shape=(28, 28, 1)),
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


MODELS = {"mlp": build_mlp, "cnn": build_cnn}
INPUT_SHAPES = {"mlp": (784,), "cnn": (28, 28, 1)}


def build(name: str) -> keras.Sequential:
    if name not in MODELS:
        raise DigitlabError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]()


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
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DigitlabError(f"expected images of shape (N, 28, 28), got {images.shape}")
    return (images.astype("float32") / 255.0).reshape((images.shape[0], *input_shape))
