"""The tutorial's pipeline end to end: `digitlab train` (MLP, 5 epochs, warm data cache).

Reports per-epoch seconds, the whole command's wall time, test accuracy and peak RSS, and checks
them against the targets: steady-state epoch <= 1.5 s, whole train <= 20 s, peak RSS <= 1 GB.

    python benchmarks/seed_pipeline.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, write_result

TARGETS = {"steady_epoch_seconds": 1.5, "train_wall_seconds": 20.0, "peak_rss_mb": 1024.0}


def one_run(runs_dir: Path) -> dict:
    digitlab = Path(sys.executable).with_name("digitlab")
    environment = {**os.environ, "DIGITLAB_RUNS": str(runs_dir), "DIGITLAB_OFFLINE": "1"}
    started = time.perf_counter()
    # A fresh child each time, so ru_maxrss of RUSAGE_CHILDREN is the largest child: this one
    # is the only kind we start.
    subprocess.run([str(digitlab), "train"], env=environment, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    manifest = json.loads((runs_dir / "latest" / "metrics.json").read_text())
    epochs = manifest["epoch_seconds"]
    return {
        "train_wall_seconds": wall,
        "epoch_seconds": epochs,
        "first_epoch_seconds": epochs[0],
        "steady_epoch_seconds": median(epochs[1:]),
        "test_accuracy": manifest["metrics"]["test_accuracy"],
        "train_accuracy": manifest["metrics"]["train_accuracy"],
        "peak_rss_mb": peak_rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as folder:
        runs = [one_run(Path(folder) / f"runs{index}") for index in range(repeats)]
    summary = {
        key: median([run[key] for run in runs])
        for key in (
            "train_wall_seconds",
            "steady_epoch_seconds",
            "first_epoch_seconds",
            "test_accuracy",
        )
    }
    summary["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    verdicts = {
        key: {
            "measured": round(summary[key], 3),
            "target": f"<= {limit}",
            "met": summary[key] <= limit,
        }
        for key, limit in TARGETS.items()
    }
    write_result(
        "seed_pipeline", {"repeats": repeats, "median": summary, "targets": verdicts, "runs": runs}
    )


if __name__ == "__main__":
    main()
