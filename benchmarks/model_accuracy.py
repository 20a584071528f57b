"""What each model reaches with its default settings, as `digitlab train` runs them.

MNIST: the CNN over several seeds (target: mean >= 99.5% test accuracy, none below 99.4%, each
in <= 5 minutes of training on 2 cores). Fashion-MNIST: both models, one seed each.
Each run is a fresh `digitlab train` process; the figures come from its metrics.json.

    python benchmarks/model_accuracy.py [--seeds 0 1 2] [--skip-fashion]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_result

TARGET_MEAN, TARGET_FLOOR, TARGET_SECONDS = 0.995, 0.994, 300.0


def train(model: str, dataset: str, seed: int, runs_dir: Path) -> dict:
    digitlab = str(Path(sys.executable).with_name("digitlab"))
    command = [digitlab, "train", "--model", model, "--dataset", dataset, "--seed", str(seed)]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        env=os.environ | {"DIGITLAB_RUNS": str(runs_dir)},
    )
    manifest = json.loads((runs_dir / "latest" / "metrics.json").read_text())
    return {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "epochs": manifest["config"]["epochs"],
        "best_epoch": manifest["best_epoch"],
        "test_accuracy": manifest["metrics"]["test_accuracy"],
        "train_accuracy": manifest["metrics"]["train_accuracy"],
        "train_seconds": round(manifest["train_seconds"], 1),
        "steady_epoch_seconds": round(statistics.median(manifest["epoch_seconds"][1:]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-fashion", action="store_true")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="digitlab-accuracy-") as folder:
        folder = Path(folder)
        cnn = [train("cnn", "mnist", seed, folder / f"cnn-{seed}") for seed in arguments.seeds]
        fashion = []
        if not arguments.skip_fashion:
            fashion = [
                train(model, "fashion-mnist", 0, folder / f"fashion-{model}")
                for model in ("mlp", "cnn")
            ]
    accuracies = [run["test_accuracy"] for run in cnn]
    mean = statistics.mean(accuracies)
    write_result(
        "model_accuracy",
        {
            "mnist_cnn": {
                "runs": cnn,
                "mean_test_accuracy": round(mean, 5),
                "min_test_accuracy": min(accuracies),
                "max_train_seconds": max(run["train_seconds"] for run in cnn),
            },
            "fashion_mnist": fashion,
            "targets_met": {
                "mean_at_least_99.5": mean >= TARGET_MEAN,
                "none_below_99.4": min(accuracies) >= TARGET_FLOOR,
                "each_within_5_minutes": all(r["train_seconds"] <= TARGET_SECONDS for r in cnn),
            },
        },
    )


if __name__ == "__main__":
    main()
