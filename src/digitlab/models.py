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


MODELS = {"mlp": build_mlp}
INPUT_SHAPES = {"mlp": (784,)}


def build(name: str) -> keras.Sequential:
    if name not in MODELS:
        raise DigitlabError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]()


def compile_model(model: keras.Model, steps_per_execution: int = 1) -> None:
    """The tutorial's compile step: adam, sparse categorical cross-entropy, accuracy."""
    model.compile(
        optimizer="adam",
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
