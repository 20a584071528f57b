"""Run folders: the model with its manifest (``metrics.json``), saved atomically, loaded safely.

A run folder holds ``model.keras``, ``metrics.json`` (config, seed, history, metrics, data
checksums, library versions, label names, input shape) and plots. ``runs/latest`` points at the
newest one.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from digitlab import DigitlabError, __version__, config, runtime
from digitlab.fileio import atomic_path, atomic_write_text, point_symlink

if TYPE_CHECKING:
    import keras

    from digitlab.datasets import DataFiles
    from digitlab.training import TrainResult

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
LATEST = "latest"


def library_versions() -> dict[str, str]:
    import jax
    import keras
    import numpy

    return {
        "digitlab": __version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "jax": jax.__version__,
        "numpy": numpy.__version__,
    }


def build_manifest(result: TrainResult, files: DataFiles, input_shape: tuple[int, ...]) -> dict:
    return {
        "model": result.config.model,
        "dataset": files.spec.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": result.config.to_dict(),
        "seed": result.config.seed,
        "input_shape": list(input_shape),
        "preprocessing": "uint8 (N, 28, 28) / 255 -> float32 in [0, 1], reshaped to input_shape",
        "label_names": list(files.spec.label_names),
        "layers": [
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": [d for d in layer.output.shape],
                "params": int(layer.count_params()),
            }
            for layer in result.model.layers
        ],
        "history": result.history,
        "best_epoch": result.best_epoch,  # the epoch whose weights were kept; None: the last
        "stopped_after": result.stopped_after,  # set when early stopping ended training
        "epoch_seconds": result.epoch_seconds,
        "train_seconds": result.train_seconds,
        "metrics": {**result.metrics, "overfitting_gap": result.overfitting_gap},
        "first_predictions": {
            "labels": result.first_labels,
            "confidences": result.first_confidences,
        },
        "data_sha256": files.sha256,
        "data_source": files.source,
        "versions": library_versions(),
    }


def new_run_dir(model_name: str, root: Path | None = None) -> Path:
    root = root or config.runs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{stamp}-{model_name}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{stamp}-{model_name}-{suffix}"
    return candidate


def save_model(model: keras.Model, folder: Path) -> None:
    """``model.keras``, and ``inference.npz`` for the NumPy runtime when its layers allow."""
    import numpy as np

    with atomic_path(folder / MODEL_FILE) as temporary:
        model.save(temporary)
    exported = runtime.export(model)
    if exported is not None:
        with atomic_path(folder / runtime.INFERENCE_FILE) as temporary:
            np.savez(temporary, **exported)


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / METRICS_FILE, json.dumps(manifest, indent=2) + "\n")


def mark_latest(run_dir: Path) -> None:
    point_symlink(run_dir.parent / LATEST, run_dir.name)


def resolve_run(run: Path | None = None) -> Path:
    """The run folder named, or ``runs/latest``; a clear error if it is not a run."""
    if run is None:
        latest = config.runs_dir() / LATEST
        if not latest.exists():
            raise DigitlabError(
                f"no trained model in {config.runs_dir()}/: run `digitlab train` "
                f"first, or name a run folder with --run"
            )
        run = latest
    run = Path(run).expanduser()
    if not run.is_dir():
        raise DigitlabError(f"{run} is not a run folder")
    for name in (MODEL_FILE, METRICS_FILE):
        if not (run / name).is_file():
            raise DigitlabError(f"{run} is not a complete run folder: {name} is missing")
    return run.resolve()


def read_manifest(run: Path) -> dict:
    try:
        manifest = json.loads((run / METRICS_FILE).read_text())
    except (OSError, ValueError) as error:
        raise DigitlabError(f"{run / METRICS_FILE} is unreadable: {error}") from None
    for key in ("model", "dataset", "input_shape", "metrics", "label_names"):
        if key not in manifest:
            raise DigitlabError(f"{run / METRICS_FILE} lacks {key!r}: not a digitlab run")
    return manifest


@dataclass
class Run:
    folder: Path
    manifest: dict
    model: keras.Model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input_shape"])


def load_run(run: Path | None = None) -> Run:
    """Load a run's model (Keras safe mode: no arbitrary code) and manifest."""
    import keras

    folder = resolve_run(run)
    manifest = read_manifest(folder)
    try:
        model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged file
        raise DigitlabError(f"cannot load {folder / MODEL_FILE}: {error}") from None
    return Run(folder, manifest, model)
