"""Run folders: a trained model with its manifest, plots and report, published atomically and
loaded as untrusted input.

A run folder holds ``model.keras``, ``inference.npz`` (the NumPy copy, ``runtime``),
``metrics.json`` (the manifest: config, seed, history, metrics, data checksums, library
versions, label names, input shape), ``predictions.png``, ``history.png`` and ``report.html``.
``runs/latest`` points at the newest digit model, ``runs/latest-reader`` at the newest number
reader. ``save_run`` is the one place that writes them.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError, __version__, config, models, runtime
from digitlab.fileio import atomic_path, atomic_write_text, leftover_name, point_symlink, umask

if TYPE_CHECKING:
    import keras

    from digitlab.datasets import DataFiles
    from digitlab.training import TrainResult

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
PREDICTIONS_PLOT = "predictions.png"
HISTORY_PLOT = "history.png"
LATEST = "latest"  # the newest digit model: what `predict`, `serve` and `evaluate` use
LATEST_READER = "latest-reader"  # the newest number reader: what reads written numbers
PREPROCESSING = "uint8 (N, 28, 28) / 255 -> float32 in [0, 1], reshaped to input_shape"


class NoRunError(DigitlabError):
    """There is no trained model where one was looked for."""


def library_versions() -> dict[str, str]:
    import jax
    import keras

    return {
        "digitlab": __version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }


def build_manifest(result: TrainResult, files: DataFiles) -> dict:
    return {
        "model": result.config.model,
        "dataset": files.spec.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": result.config.to_dict(),
        "seed": result.config.seed,
        "input_shape": list(result.input_shape),
        "preprocessing": PREPROCESSING,
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
        "reads": models.get(result.config.model).reads,
        # the "not a digit" rule; a number reader's "not a number" rule
        "rejection": result.rejection,
        "history": result.history,
        "best_epoch": result.best_epoch,  # the epoch whose weights were kept; None: the last
        "stopped_after": result.stopped_after,  # set when early stopping ended training
        "epoch_seconds": result.epoch_seconds,
        "train_seconds": result.train_seconds,
        # trained data-parallel (train --distributed): {"processes": N, "devices": D}
        "distributed": result.distributed,
        # a reader trained further (train --from): the run it started from, and that run's
        "started_from": result.started_from,
        "metrics": {**result.metrics, "overfitting_gap": result.overfitting_gap},
        "first_predictions": _first_predictions(result),
        "data_sha256": files.sha256,
        "data_source": files.source,
        "versions": library_versions(),
    }


def _first_predictions(result: TrainResult) -> dict:
    if result.numbers is not None:  # a number reader: the first test numbers and readings
        shown = len(result.first_confidences)
        return {
            "texts": result.numbers.texts[:shown],
            "readings": result.numbers.readings[:shown],
            "confidences": result.first_confidences,
        }
    return {"labels": result.first_labels, "confidences": result.first_confidences}


def save_model(model: keras.Model, folder: Path) -> None:
    """``model.keras``, and ``inference.npz`` for the NumPy runtime when its layers allow."""
    with atomic_path(folder / MODEL_FILE) as temporary:
        model.save(temporary)
    exported = runtime.export(model)
    if exported is not None:
        with atomic_path(folder / runtime.INFERENCE_FILE) as temporary:
            np.savez(temporary, **exported)


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / METRICS_FILE, json.dumps(manifest, indent=2) + "\n")


def save_run(
    result: TrainResult,
    files: DataFiles,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    root: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> Path:
    """Write a complete run folder for ``result`` under ``root`` (default ``runs/``), point
    ``latest`` at it, and return it.

    The folder is built under a temporary name and renamed into place when complete, so a
    reader never sees half a run. The rename cannot overwrite a run (it fails onto a folder
    that is not empty), so two trainings finishing in the same second get ``...-mlp`` and
    ``...-mlp-2``. If the final rename fails otherwise, the finished folder is kept under its
    temporary name and the error says where.
    """
    from digitlab import reports
    from digitlab.predict import Predictor

    root = check_writable(root)
    manifest = build_manifest(result, files)
    name = _free_run_name(root, result.config.model)
    temporary = Path(tempfile.mkdtemp(prefix=leftover_name(name), suffix=".tmp", dir=root))

    if result.numbers is not None:
        data = reports.NumberReportData(manifest, result.numbers)
    else:
        data = reports.ReportData(
            manifest, test_images, test_labels, result.test_probabilities,
            predict_digits=Predictor.of_model(result.model).predict_digits,
        )  # fmt: skip

    def write_report(run_name: str) -> None:
        reports.build_report(temporary, manifest, data, progress=progress, run_name=run_name)

    try:
        save_model(result.model, temporary)
        write_manifest(temporary, manifest)
        shown = len(result.first_confidences)
        if result.numbers is not None:
            numbers = result.numbers
            reports.plot_readings(
                numbers.strips[:shown],
                numbers.texts[:shown],
                numbers.readings[:shown],
                result.first_confidences,
                temporary / PREDICTIONS_PLOT,
            )
        else:
            reports.plot_predictions(
                test_images[:shown],
                test_labels[:shown],
                result.first_labels,
                temporary / PREDICTIONS_PLOT,
                files.spec.label_names,
                confidences=result.first_confidences,
            )
        reports.plot_history(
            result.history,
            temporary / HISTORY_PLOT,
            test_accuracy=result.metrics["test_accuracy"],
            best=result.best_epoch,
        )
        write_report(name)
        os.chmod(temporary, 0o777 & ~umask())
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    final = _publish(temporary, root, name, result.config.model, write_report)
    mark_latest(final, manifest["reads"])
    return final


def _free_run_name(root: Path, model_name: str) -> str:
    """``YYYYmmdd-HHMMSS-model``, or with ``-2``, ``-3``... if that run exists already."""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
    suffix = 1
    while (root / _numbered(base, suffix)).exists():
        suffix += 1
    return _numbered(base, suffix)


def _numbered(base: str, suffix: int) -> str:
    return base if suffix == 1 else f"{base}-{suffix}"


MAX_NAME_TRIES = 100


def _publish(
    temporary: Path, root: Path, name: str, model_name: str, write_report: Callable
) -> Path:
    """Rename the finished folder to ``root/name``; if another training took that name in the
    meantime, to the next free one (its report retitled first)."""
    for _ in range(MAX_NAME_TRIES):
        final = root / name
        try:
            _rename(temporary, final)
            return final
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.exists():
                raise DigitlabError(
                    f"the trained run is complete but could not be published as {final} "
                    f"({error.strerror or error}); it is kept in {temporary}"
                ) from None
        name = _free_run_name(root, model_name)
        write_report(name)
    raise DigitlabError(f"no free run name in {root}; the trained run is kept in {temporary}")


def _rename(temporary: Path, final: Path) -> None:
    # rename(2) fails onto a folder that is not empty (a run), and never leaves half a folder
    os.rename(temporary, final)


def check_writable(root: Path | None = None) -> Path:
    """Fail before a long training, not after it, when runs cannot be written to ``root``."""
    root = Path(root or config.runs_dir())
    if root.exists() and not root.is_dir():
        raise DigitlabError(f"cannot write runs to {root}: it is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=leftover_name("write-check"))
        probe.close()
    except OSError as error:
        raise DigitlabError(f"cannot write runs to {root}: {error.strerror or error}") from None
    return root


def mark_latest(run_dir: Path, reads: str = "digit") -> None:
    """Point ``latest`` (a digit model) or ``latest-reader`` (a number reader) at a run."""
    point_symlink(run_dir.parent / (LATEST_READER if reads == "number" else LATEST), run_dir.name)


def latest_reader() -> Path | None:
    """The newest number reader in the runs folder, else the ready-made one shipped with
    digitlab (None if neither)."""
    link = config.runs_dir() / LATEST_READER
    return resolve_run(link) if link.exists() else ready_run("number")


def latest_digit_run() -> Path | None:
    """The newest digit model in the runs folder (``runs/latest``), None if it has none."""
    link = config.runs_dir() / LATEST
    return resolve_run(None) if link.exists() or link.is_symlink() else None


# Models shipped with digitlab, made by `make ready-models` (its own `digitlab train` with a
# fixed seed): what answers when the runs folder has none of that kind, so that a user can
# read digits right after installing. A run the user trained, or names, always comes first.
READY_DIR = Path(__file__).parent / "ready"
READY_RUNS = {"digit": "cnn", "number": "reader"}


def ready_run(reads: str = "digit") -> Path | None:
    """The ready-made digit model (or number reader), if this installation has it."""
    folder = READY_DIR / READY_RUNS[reads]
    complete = all((folder / name).is_file() for name in (MODEL_FILE, METRICS_FILE))
    return folder.resolve() if complete else None


def is_ready_made(run: Path) -> bool:
    return Path(run).resolve().parent == READY_DIR.resolve()


def describe_run(run: Path, manifest: dict | None = None) -> str:
    """Which model this is, for people: "the cnn of runs/20261129-101500-cnn", or "the
    ready-made cnn shipped with digitlab (99.51% on the MNIST test set)"."""
    manifest = manifest or read_manifest(run)
    model = manifest.get("model", "model")
    if not is_ready_made(run):
        return f"the {model} of {run}"
    metrics = manifest.get("metrics", {})
    score = (
        (
            f"{metrics['test_accuracy']:.2%} on the MNIST test set"
            if manifest.get("reads") != "number"
            else f"{metrics['test_accuracy']:.1%} of its test numbers read exactly"
        )
        if isinstance(metrics.get("test_accuracy"), float)
        else "trained on MNIST"
    )
    return f"the ready-made {model} shipped with digitlab ({score})"


def resolve_run(run: Path | None = None) -> Path:
    """The run folder named, or ``runs/latest``, or the ready-made digit model when the runs
    folder has no digit model; a clear error if it is not a run."""
    if run is None:
        latest = config.runs_dir() / LATEST
        if latest.is_symlink() and not latest.exists():
            raise NoRunError(f"{latest} points to a run that is gone")
        if not latest.exists():
            ready = ready_run("digit")
            if ready is None:
                raise NoRunError(f"no trained model in {config.runs_dir()}/")
            return ready
        run = latest
    run = Path(run).expanduser()
    if not run.is_dir():
        raise DigitlabError(f"{run} is not a run folder")
    for name in (MODEL_FILE, METRICS_FILE):
        if not (run / name).is_file():
            raise DigitlabError(f"{run} is not a complete run folder: {name} is missing")
    return run.resolve()


def read_manifest(run: Path) -> dict:
    """The manifest of a run folder, checked against its schema (``manifest.Manifest``)."""
    from digitlab.manifest import validate

    path = run / METRICS_FILE
    try:
        text = path.read_text()
        if len(text) > MAX_MANIFEST_BYTES:
            raise DigitlabError(f"{path} is over {MAX_MANIFEST_BYTES // 2**20} MiB: not a manifest")
        manifest = json.loads(text)
    except (OSError, ValueError, RecursionError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not valid JSON"
        raise DigitlabError(f"{path} is unreadable: {reason}") from None
    return validate(manifest, path)


MAX_MANIFEST_BYTES = 16 * 2**20  # a real one is ~10 kB


@dataclass
class Run:
    folder: Path
    manifest: dict
    model: keras.Model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input_shape"])


def load_run(run: Path | None = None) -> Run:
    """Load a run's Keras model (safe mode: no arbitrary code) and manifest."""
    import keras

    folder = resolve_run(run)
    manifest = read_manifest(folder)
    try:
        # compile=False: digitlab only predicts with a loaded model (and the reader's loss is
        # a digitlab function, which safe mode would not load)
        model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file
        raise DigitlabError(
            f"cannot load {folder / MODEL_FILE}: damaged or not a Keras model "
            f"({type(error).__name__})"
        ) from None
    return Run(folder, manifest, model)
