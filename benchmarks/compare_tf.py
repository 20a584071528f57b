"""digitlab side by side with the tutorial's own stack (tf.keras), on the same MNIST files.

Alternates the tutorial's script on tf.keras (tutorial_tf.py, in the TensorFlow environment
that `make bench-compare` builds) and `digitlab train`, REPEATS times each, and reports medians
and ratios: seconds per steady-state epoch (epochs 2-5), whole training (fit, and the whole
process from start to exit), test accuracy, peak RSS, warm single-image predict latency and
10,000-image batch throughput (tf.keras: model.predict, as the tutorial calls it; digitlab:
its Predictor on the saved run).

Then time to accuracy: keras.io's "Simple MNIST convnet" on tf.keras, and `digitlab train
--model cnn`, each once, with test accuracy after every epoch (not timed).

Targets: the MLP trains >= 2x faster than tf.keras with the same accuracy (within 0.3 points);
single-image predict <= 2 ms warm; the CNN reaches 99.5% in less training time than the
convnet needs to reach 99.2%. The MLP epoch is also compared with its fp32 matrix-multiply
bound on this machine (0.7 s: 113 GFLOP per epoch at 162 GFLOPS on 2 cores).

    python benchmarks/compare_tf.py --tf-python .venv-tf/bin/python [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import median, write_result
from digitlab import config, datasets
from digitlab.predict import Predictor

HERE = Path(__file__).parent
MLP_EPOCH_BOUND_SECONDS = 0.7  # fp32 matmul work of one MLP epoch / this machine's peak
SAME_ACCURACY_POINTS = 0.3  # run-to-run spread of the MLP's 5-epoch test accuracy is ~0.2


def run_measured(command: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run ``command``; return its stdout, wall seconds and peak RSS in MB (this child only)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{command[0]} failed with exit code {process.returncode}")
    return output, wall, usage.ru_maxrss / 1024


def result_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT "))


def tensorflow_run(tf_python: str, data_dir: Path, convnet: bool = False) -> dict:
    command = [tf_python, str(HERE / "tutorial_tf.py"), str(data_dir)]
    # tf.keras is Keras 3 on TensorFlow: a KERAS_BACKEND=jax from digitlab's side must not leak
    env = os.environ | {"KERAS_BACKEND": "tensorflow"}
    output, wall, rss = run_measured(command + (["--convnet"] if convnet else []), env=env)
    return result_line(output) | {"process_seconds": wall, "peak_rss_mb": rss}


def digitlab_run(runs_dir: Path, x_test: np.ndarray) -> dict:
    digitlab = str(Path(sys.executable).with_name("digitlab"))
    env = os.environ | {"DIGITLAB_RUNS": str(runs_dir)}
    _, wall, rss = run_measured([digitlab, "train"], env=env)
    manifest = json.loads((runs_dir / "latest" / "metrics.json").read_text())
    predictor = Predictor.from_run(runs_dir / "latest")
    latencies = []
    for index in range(105):
        started = time.perf_counter()
        predictor.predict_digits(x_test[index : index + 1])
        latencies.append(time.perf_counter() - started)
    predictor.predict_digits(x_test)
    started = time.perf_counter()
    predictor.predict_digits(x_test)
    throughput = len(x_test) / (time.perf_counter() - started)
    return {
        "epoch_seconds": manifest["epoch_seconds"],
        "fit_seconds": manifest["train_seconds"],
        "test_accuracy_final": manifest["metrics"]["test_accuracy"],
        "process_seconds": wall,
        "peak_rss_mb": rss,
        "single_image_ms": median(latencies[5:]) * 1000,
        "batch_10k_images_per_second": throughput,
    }


def summary(runs: list[dict]) -> dict:
    return {
        "steady_epoch_seconds": median([median(run["epoch_seconds"][1:]) for run in runs]),
        "fit_seconds": median([run["fit_seconds"] for run in runs]),
        "process_seconds": median([run["process_seconds"] for run in runs]),
        "test_accuracy": median([run["test_accuracy_final"] for run in runs]),
        "peak_rss_mb": median([run["peak_rss_mb"] for run in runs]),
        "single_image_ms": median([run["single_image_ms"] for run in runs]),
        "batch_10k_images_per_second": median([run["batch_10k_images_per_second"] for run in runs]),
    }


def digitlab_cnn_progress(data: datasets.Arrays) -> dict:
    """`digitlab train --model cnn` in-process, with test accuracy after every epoch."""
    import keras

    from digitlab import models, training

    test_inputs = models.prepare(data[1][0], models.get("cnn").input_shape)
    record = {"epoch_seconds": [], "test_accuracy": []}

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            probabilities = self.model.predict(test_inputs, verbose=0, batch_size=1024)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == data[1][1]))
            record["test_accuracy"].append(accuracy)

    result = training.train(
        models.get("cnn").config(),
        data,
        report=lambda line: None,
        verbose=0,
        callbacks=[TestAccuracy()],
    )
    record["epoch_seconds"] = result.epoch_seconds  # the timer stops before the test pass
    record["elapsed_seconds"] = list(np.cumsum(result.epoch_seconds))
    record["test_accuracy_final"] = result.metrics["test_accuracy"]
    return record


def seconds_to_reach(record: dict, accuracy: float) -> float | None:
    for elapsed, reached in zip(record["elapsed_seconds"], record["test_accuracy"], strict=True):
        if reached >= accuracy:
            return round(float(elapsed), 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", required=True, help="python of the TensorFlow env")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cnn", action="store_true", help="only the tutorial's MLP")
    arguments = parser.parse_args()
    data = datasets.load_data("mnist", report=lambda line: None)
    data_dir = config.data_dir() / "mnist"

    tensorflow, digitlab = [], []
    with tempfile.TemporaryDirectory(prefix="digitlab-compare-") as folder:
        for repeat in range(arguments.repeats):
            print(f"round {repeat + 1}/{arguments.repeats}: tf.keras tutorial", flush=True)
            tensorflow.append(tensorflow_run(arguments.tf_python, data_dir))
            print(f"round {repeat + 1}/{arguments.repeats}: digitlab train", flush=True)
            digitlab.append(digitlab_run(Path(folder) / f"runs-{repeat}", data[1][0]))
    tf_summary, our_summary = summary(tensorflow), summary(digitlab)
    ratios = {
        "steady_epoch_speedup": tf_summary["steady_epoch_seconds"]
        / our_summary["steady_epoch_seconds"],
        "fit_speedup": tf_summary["fit_seconds"] / our_summary["fit_seconds"],
        "process_speedup": tf_summary["process_seconds"] / our_summary["process_seconds"],
        "test_accuracy_difference_points": 100
        * (our_summary["test_accuracy"] - tf_summary["test_accuracy"]),
        "peak_rss_ratio": our_summary["peak_rss_mb"] / tf_summary["peak_rss_mb"],
        "single_image_latency_speedup": tf_summary["single_image_ms"]
        / our_summary["single_image_ms"],
        "batch_10k_throughput_ratio": our_summary["batch_10k_images_per_second"]
        / tf_summary["batch_10k_images_per_second"],
    }
    result = {
        "repeats": arguments.repeats,
        "tensorflow_versions": {k: tensorflow[0][k] for k in ("tensorflow", "keras")},
        "mlp": {"tf_keras": tf_summary, "digitlab": our_summary, "ratios": ratios},
        "mlp_runs": {"tf_keras": tensorflow, "digitlab": digitlab},
        "mlp_epoch_vs_matmul_bound": {
            "bound_seconds": MLP_EPOCH_BOUND_SECONDS,
            "fraction_of_peak": MLP_EPOCH_BOUND_SECONDS / our_summary["steady_epoch_seconds"],
        },
    }
    targets = {
        "mlp_2x_faster": ratios["steady_epoch_speedup"] >= 2 and ratios["fit_speedup"] >= 2,
        "same_accuracy": abs(ratios["test_accuracy_difference_points"]) <= SAME_ACCURACY_POINTS,
        "single_image_2ms": our_summary["single_image_ms"] <= 2.0,
    }
    if not arguments.skip_cnn:
        print("keras.io convnet on tf.keras (15 epochs)", flush=True)
        convnet = tensorflow_run(arguments.tf_python, data_dir, convnet=True)
        print("digitlab cnn", flush=True)
        cnn = digitlab_cnn_progress(data)
        to_992 = seconds_to_reach(convnet, 0.992)
        to_995 = seconds_to_reach(cnn, 0.995)
        result["time_to_accuracy"] = {
            "keras_io_convnet_tf_keras": convnet | {"seconds_to_99.2": to_992},
            "digitlab_cnn": cnn | {"seconds_to_99.5": to_995},
        }
        targets["cnn_995_before_convnet_992"] = to_995 is not None and (
            to_992 is None or to_995 < to_992
        )
    result["targets_met"] = targets
    write_result("compare_tf", result)


if __name__ == "__main__":
    main()
