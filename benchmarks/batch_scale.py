"""digitlab batch on Dask (issue #14): 1 worker against 2 on this machine, and the engine's
overhead against plain `digitlab predict` on the same files and cores.

Makes COUNT small PNG files (MNIST training digits, 28x28, as a scanner's crops would be),
then times, as a user runs them, each command's wall time from start to exit:
  - `digitlab predict FOLDER --json` (its preprocessing over one process per core);
  - `digitlab batch FOLDER -o OUT --workers 1` and `--workers 2` (a local Dask cluster).
Targets: 2 workers >= 1.7x one; batch with 2 workers at most 15% slower than predict.

    python benchmarks/batch_scale.py [--count 100000] [--run RUN]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from _common import write_result
from digitlab import artifacts, datasets
from exports import cpu

DIGITLAB = Path(sys.executable).with_name("digitlab")


def make_images(folder: Path, count: int) -> None:
    (x_train, _), _ = datasets.load_data("mnist", report=lambda line: None)
    for index in range(count):
        sub = folder / f"{index // 10_000:02d}"  # folders of 10,000, like a scanner's batches
        if index % 10_000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x_train[index % len(x_train)]).save(sub / f"{index:06d}.png")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--run", type=Path, default=None)
    arguments = parser.parse_args()
    run = artifacts.resolve_run(arguments.run) if arguments.run else artifacts.ready_run("digit")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        make_images(scratch / "images", arguments.count)
        print(f"made {arguments.count:,} PNG files in {time.perf_counter() - started:.0f} s")
        seconds = {}
        seconds["predict"] = timed(
            [str(DIGITLAB), "predict", "--json", "--run", str(run), str(scratch / "images")]
        )
        print(f"digitlab predict: {seconds['predict']:.1f} s")
        for workers in (1, 2):
            output = scratch / f"out-{workers}"
            seconds[f"batch_{workers}"] = timed(
                [str(DIGITLAB), "batch", str(scratch / "images"), "-o", str(output),
                 "--run", str(run), "--workers", str(workers)]
            )  # fmt: skip
            print(f"digitlab batch --workers {workers}: {seconds[f'batch_{workers}']:.1f} s")
            shutil.rmtree(output)
    rate = {name: round(arguments.count / value, 1) for name, value in seconds.items()}
    speedup = seconds["batch_1"] / seconds["batch_2"]
    overhead = seconds["batch_2"] / seconds["predict"] - 1
    write_result(
        "batch_scale",
        {
            "cpu": cpu(),
            "cores": os.cpu_count(),
            "images": arguments.count,
            "run": str(run),
            "seconds": {name: round(value, 2) for name, value in seconds.items()},
            "images_per_second": rate,
            "speedup_2_workers": round(speedup, 3),
            "engine_overhead_vs_predict": round(overhead, 3),
            "targets_met": {
                "speedup_2_workers >= 1.7": speedup >= 1.7,
                "engine_overhead_vs_predict <= 0.15": overhead <= 0.15,
            },
        },
    )


if __name__ == "__main__":
    main()
