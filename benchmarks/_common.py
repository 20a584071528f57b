"""Helpers shared by the benchmark scripts: the run environment and writing the JSON result."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_result(name: str, result: dict) -> Path:
    """Print the result and write it to benchmarks/results/NAME.json (atomically)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
    from digitlab.fileio import atomic_write_text

    text = json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2)
    print(text)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, text + "\n")
    print(f"written to {path}")
    return path


def median(values: list[float]) -> float:
    return statistics.median(values)
