"""`digitlab predict` speed, end to end: one image cold, and a folder of 10,000 small PNGs.

Targets: `digitlab predict one.png` (a fresh process) <= 2.5 s wall; the folder of 10,000
MNIST test digits saved as 28x28 PNG files >= 500 images/s. Also the warm in-process latency of
one image through Predictor.predict (preprocessing included) and through the model alone.

    python benchmarks/predict_speed.py [--run DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import median, write_result
from digitlab import datasets
from digitlab.predict import Predictor


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    digitlab = str(Path(sys.executable).with_name("digitlab"))
    run = ["--run", str(arguments.run)] if arguments.run else []
    _, (x_test, y_test) = datasets.load_data("mnist", report=lambda line: None)

    with tempfile.TemporaryDirectory(prefix="digitlab-speed-") as folder:
        folder = Path(folder)
        for index, digit in enumerate(x_test):
            Image.fromarray(digit).save(folder / f"{index:05d}.png")
        one = str(folder / "00000.png")
        cold = [timed([digitlab, "predict", *run, one]) for _ in range(arguments.repeats)]
        many = [timed([digitlab, "predict", *run, str(folder)]) for _ in range(2)]

        predictor = Predictor.from_run(arguments.run)
        predictor.predict([one])  # warm-up
        warm, model_only = [], []
        for index in range(200):
            started = time.perf_counter()
            predictor.predict([folder / f"{index:05d}.png"])
            warm.append(time.perf_counter() - started)
            started = time.perf_counter()
            predictor.predict_digits(x_test[index : index + 1])
            model_only.append(time.perf_counter() - started)

    images_per_second = len(x_test) / median(many)
    write_result(
        "predict_speed",
        {
            "model": predictor.manifest.get("model"),
            "cold_single_image_seconds": {
                "median": round(median(cold), 3),
                "runs": [round(s, 3) for s in cold],
            },
            "folder_10k_png": {
                "seconds": [round(s, 2) for s in many],
                "images_per_second": round(images_per_second),
            },
            "warm_single_image_ms": {
                "with_preprocessing_p50": round(1e3 * median(warm), 3),
                "with_preprocessing_p99": round(1e3 * float(np.percentile(warm, 99)), 3),
                "model_only_p50": round(1e3 * median(model_only), 3),
            },
            "targets": {
                "cold_single_image_seconds": {"target": "<= 2.5", "met": median(cold) <= 2.5},
                "images_per_second": {"target": ">= 500", "met": images_per_second >= 500},
            },
        },
    )


if __name__ == "__main__":
    main()
