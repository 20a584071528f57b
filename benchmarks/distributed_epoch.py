"""Epoch time of `digitlab train --distributed` with 2 processes on this machine, and with one
process given two CPU devices (XLA_FLAGS), against one process (issue #14), for the MLP and the
CNN, from the runs' own epoch timings.

    python benchmarks/distributed_epoch.py [--epochs 3] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_result
from exports import cpu

DIGITLAB = str(Path(sys.executable).with_name("digitlab"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def manifest_of(runs: Path) -> dict:
    return json.loads((runs / "latest" / "metrics.json").read_text())


def single(model: str, epochs: int, runs: Path, devices: int = 1) -> dict:
    """One process; with ``devices`` > 1, data-parallel over that many forced CPU devices."""
    environment = {**os.environ, "DIGITLAB_RUNS": str(runs)}
    options = []
    if devices > 1:
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        options = ["--distributed"]
    subprocess.run(
        [DIGITLAB, "train", "--model", model, "--epochs", str(epochs), *options],
        check=True, capture_output=True, env=environment,
    )  # fmt: skip
    return manifest_of(runs)


def two_processes(model: str, epochs: int, runs: Path) -> dict:
    port = free_port()
    processes = [
        subprocess.Popen(
            [
                DIGITLAB,
                "train",
                "--model",
                model,
                "--epochs",
                str(epochs),
                "--distributed",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(index),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DIGITLAB_RUNS": str(runs)},
        )  # fmt: skip
        for index in (0, 1)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"distributed training failed: {err[-500:]}")
    return manifest_of(runs)


def figures(manifest: dict) -> dict:
    seconds = manifest["epoch_seconds"]
    return {
        "epoch_seconds": [round(s, 2) for s in seconds],
        "steady_epoch_s": round(statistics.median(seconds[1:] or seconds), 2),
        "test_accuracy": manifest["metrics"]["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    arguments = parser.parse_args()
    result: dict = {"cpu": cpu(), "epochs": arguments.epochs}
    with tempfile.TemporaryDirectory() as scratch:
        for model in arguments.models:
            one = figures(single(model, arguments.epochs, Path(scratch) / f"{model}-1"))
            two = figures(two_processes(model, arguments.epochs, Path(scratch) / f"{model}-2"))
            devices = figures(single(model, arguments.epochs, Path(scratch) / f"{model}-d", 2))
            result[model] = {
                "one_process": one,
                "two_processes": two,
                "one_process_two_devices": devices,
                "epoch_time_ratio": round(two["steady_epoch_s"] / one["steady_epoch_s"], 2),
                "two_devices_ratio": round(devices["steady_epoch_s"] / one["steady_epoch_s"], 2),
            }
            print(model, result[model], flush=True)
    write_result("distributed_epoch", result)


if __name__ == "__main__":
    main()
