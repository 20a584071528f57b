"""Seconds per epoch of one Keras model on the current interpreter's Keras backend.

Needs only NumPy and Keras (digitlab's own CNN is imported from ../src, without installing it),
so that it runs in a separate environment with another backend installed. Reads MNIST's raw
IDX files from the folder given (digitlab's cache). Plain batches, no augmentation: this times
the backend, not the input pipeline.

    KERAS_BACKEND=tensorflow python benchmarks/backend_epoch.py DATA_DIR --model convnet --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_idx(path: Path, header_bytes: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), np.uint8, offset=header_bytes)


def build(name: str):
    import keras
    from keras import layers

    if name == "cnn":  # digitlab's
        sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
        from digitlab.models import build_cnn

        return build_cnn()
    if name == "mlp":  # the tutorial's model
        return keras.Sequential(
            [
                keras.Input((784,)),
                layers.Dense(512, activation="relu"),
                layers.Dense(10, activation="softmax"),
            ]
        )
    # keras.io's "Simple MNIST convnet"
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", choices=["mlp", "convnet", "cnn"], default="convnet")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    arguments = parser.parse_args()
    import keras

    images = read_idx(arguments.data / "train-images-idx3-ubyte", 16).reshape(-1, 28, 28, 1)
    labels = read_idx(arguments.data / "train-labels-idx1-ubyte", 8)
    inputs = images.astype("float32") / 255
    if arguments.model == "mlp":
        inputs = inputs.reshape(-1, 784)
    keras.utils.set_random_seed(0)
    model = build(arguments.model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    model.fit(
        inputs,
        labels,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        verbose=0,
        callbacks=[Timer()],
    )
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "model": arguments.model,
                "batch_size": arguments.batch_size,
                "epoch_seconds": [round(s, 2) for s in seconds],
            }
        )
    )


if __name__ == "__main__":
    main()
