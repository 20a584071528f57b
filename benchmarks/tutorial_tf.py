"""The Keras MNIST tutorial's script on tf.keras, instrumented for `compare_tf.py`.

Runs in the separate TensorFlow environment that `make bench-compare` builds (.venv-tf): only
TensorFlow and NumPy, no digitlab. The tutorial's code is kept line for line; what differs:
- the data comes from the raw IDX files digitlab verified (DATA_DIR), because
  keras.datasets.mnist.load_data() downloads them and this machine has no route to the mirror;
- a callback times each epoch; after the tutorial's steps, single-image and 10,000-image predict
  timings; one JSON line on stdout.
With --convnet it runs keras.io's "Simple MNIST convnet" instead (15 epochs, batch 128,
validation_split 0.1, as published) and records test accuracy after every epoch.

    .venv-tf/bin/python benchmarks/tutorial_tf.py DATA_DIR [--convnet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up chatter on stderr


def read_idx(path: Path, header_bytes: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), np.uint8, offset=header_bytes)


def load_data(folder: Path):
    """What keras.datasets.mnist.load_data() returns, from the same files digitlab uses."""
    return (
        (
            read_idx(folder / "train-images-idx3-ubyte", 16).reshape(-1, 28, 28),
            read_idx(folder / "train-labels-idx1-ubyte", 8),
        ),
        (
            read_idx(folder / "t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28),
            read_idx(folder / "t10k-labels-idx1-ubyte", 8),
        ),
    )


def epoch_timer(keras, test_inputs=None, test_labels=None):
    """Seconds per epoch; with test data, also test accuracy after each epoch (not timed)."""
    record = {"epoch_seconds": [], "test_accuracy": [], "elapsed_seconds": []}

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.training_seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            self.training_seconds += seconds
            record["epoch_seconds"].append(seconds)
            record["elapsed_seconds"].append(self.training_seconds)
            if test_inputs is not None:
                probabilities = self.model.predict(test_inputs, verbose=0, batch_size=1000)
                accuracy = float(np.mean(probabilities.argmax(axis=1) == test_labels))
                record["test_accuracy"].append(accuracy)

    return Timer(), record


def predict_timings(model, test_images) -> dict:
    """Warm single-image latency of model.predict (the tutorial's call) and 10k throughput."""
    one = test_images[:1]
    for _ in range(5):
        model.predict(one, verbose=0)
    latencies = []
    for _ in range(100):
        started = time.perf_counter()
        model.predict(one, verbose=0)
        latencies.append(time.perf_counter() - started)
    model.predict(test_images, verbose=0)
    started = time.perf_counter()
    model.predict(test_images, verbose=0)
    return {
        "single_image_ms": statistics.median(latencies) * 1000,
        "batch_10k_images_per_second": len(test_images) / (time.perf_counter() - started),
    }


def tutorial(folder: Path) -> dict:
    from tensorflow import keras
    from tensorflow.keras import layers

    (train_images, train_labels), (test_images, test_labels) = load_data(folder)
    model = keras.Sequential(
        [layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")]
    )
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_images = train_images.reshape((60000, 28 * 28))
    train_images = train_images.astype("float32") / 255
    test_images = test_images.reshape((10000, 28 * 28))
    test_images = test_images.astype("float32") / 255
    timer, record = epoch_timer(keras)
    started = time.perf_counter()
    model.fit(train_images, train_labels, epochs=5, batch_size=128, callbacks=[timer], verbose=2)
    record["fit_seconds"] = time.perf_counter() - started
    test_digits = test_images[0:20]
    predictions = model.predict(test_digits)
    record["first_predictions"] = predictions.argmax(axis=1).tolist()
    test_loss, test_acc = model.evaluate(test_images, test_labels)
    record["test_accuracy_final"] = float(test_acc)
    record |= predict_timings(model, test_images)
    return record


def convnet(folder: Path) -> dict:
    from tensorflow import keras
    from tensorflow.keras import layers

    (x_train, y_train), (x_test, y_test) = load_data(folder)
    x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
    x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
    num_classes = 10
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    batch_size, epochs = 128, 15
    # keras.io uses one-hot labels and categorical cross-entropy; sparse labels are the same loss
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    timer, record = epoch_timer(keras, x_test, y_test)
    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_split=0.1,
        callbacks=[timer],
        verbose=2,
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with MNIST's four raw IDX files")
    parser.add_argument("--convnet", action="store_true", help="keras.io's convnet instead")
    arguments = parser.parse_args()
    import tensorflow as tf

    record = convnet(arguments.data) if arguments.convnet else tutorial(arguments.data)
    record |= {"tensorflow": tf.__version__, "keras": tf.keras.__version__}
    print("RESULT " + json.dumps(record))


if __name__ == "__main__":
    main()
