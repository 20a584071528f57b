"""Reading very many images on a Dask cluster: ``digitlab batch``.

The images are split into shards (a fixed list of paths each, recorded in the output folder's
``shards.json``); each shard is one Dask task, read on a worker with the run's NumPy runtime
(loaded once per worker process, so a worker never imports Keras) and written as one Parquet
(or JSON Lines) file, atomically: a file exists only when its shard is complete. Running again
skips the shards whose file exists. A worker that dies (out of memory, kill -9) loses only the
shards it was reading: Dask's nanny starts a new worker and the scheduler gives those shards to
a live one; since a shard's file is written in one rename, no image is lost or written twice.

Dask, not Ray, by measurement (benchmarks/engines.py, docs/scale-out.md): on the same 20,000
files with the same reading function, a local Dask cluster started in 1.1-1.6 s against Ray's
4.5 s, read 553 images/s with one worker and 1,066 with two (Ray Data: 516 and 553), in
0.2-0.3 GB of memory against 1.8 GB, and installs 22 MB against Ray's 225 MB; both retry a
dead worker's work.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from digitlab import DigitlabError, __version__
from digitlab.fileio import atomic_path, atomic_write_text
from digitlab.preprocess import IMAGE_SUFFIXES, MAX_FILE_BYTES, ImageError

SHARD_SIZE = 1_000  # images per task: ~0.5-1 s of work, so scheduling costs little
PLAN_FILE = "shards.json"
FORMATS = ("parquet", "jsonl")
URL_PREFIXES = ("http://", "https://")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # an image inside is named archive.tar/its/name.png
TAR_ERRORS = (OSError, tarfile.TarError, EOFError)  # a damaged or cut archive
LIST_COLUMNS = ("path", "url")  # the column of a .csv or .parquet list that names the images
URL_TIMEOUT = 30  # seconds per try
URL_TRIES = 3  # a download that fails for the network or a 5xx answer is tried again
DOWNLOADS = 8  # URLs a worker downloads at once (waiting on the network, not the CPU)
GROUP = 256  # images of a shard fetched, then read, together: the bytes held at once
# A worker is one process with one thread (the NumPy runtime and preprocessing are one core's
# work each) and one BLAS thread.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cluster_modules():
    try:
        import dask.distributed
    except ImportError:
        raise DigitlabError("digitlab batch needs Dask: pip install 'digitlab[cluster]'") from None
    return dask.distributed


def list_sources(given: Iterable[str]) -> list[str]:
    """What the user named -> the names of the images to read.

    Image files and URLs (http, https) as given; folders searched recursively for images;
    tar archives (``.tar``, ``.tar.gz``, ``.tgz``), each image inside named
    ``archive.tar/its/name.png``; lists of images: ``.txt`` (one per line), ``.csv`` (its
    ``path`` or ``url`` column, else its first column), ``.parquet`` (its ``path`` or ``url``
    column). Paths in a list are as they would be given on the command line.
    """
    names: list[str] = []
    for name in given:
        path = Path(name)
        lower = name.lower()
        if lower.startswith(URL_PREFIXES):
            names.append(name)
        elif path.is_dir():
            names.extend(
                sorted(str(p) for p in path.rglob("*") if _is_image_name(p.name) and p.is_file())
            )
        elif not path.is_file():
            raise DigitlabError(f"{name}: no such file or folder")
        elif lower.endswith(TAR_SUFFIXES):
            names.extend(f"{name}/{member}" for member in _archive_images(path))
        elif lower.endswith((".txt", ".csv", ".parquet")):
            names.extend(_read_list(path))
        else:
            names.append(name)
    return names


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _archive_images(path: Path) -> list[str]:
    try:
        with tarfile.open(path) as archive:
            return [m.name for m in archive.getmembers() if m.isfile() and _is_image_name(m.name)]
    except TAR_ERRORS as error:
        raise DigitlabError(f"{path}: not a readable tar archive ({error})") from None


def _read_list(path: Path) -> list[str]:
    """The image names in a .txt, .csv or .parquet list."""
    try:
        if path.suffix.lower() == ".txt":
            lines = path.read_text(errors="replace").splitlines()
            return [line.strip() for line in lines if line.strip()]
        if path.suffix.lower() == ".csv":
            with path.open(newline="", errors="replace") as file:
                rows = [row for row in csv.reader(file) if row and row[0].strip()]
            if not rows:
                return []
            header = [cell.strip().lower() for cell in rows[0]]
            named = [column for column in LIST_COLUMNS if column in header]
            column, body = (header.index(named[0]), rows[1:]) if named else (0, rows)
            return [row[column].strip() for row in body if len(row) > column]
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except (OSError, ValueError, csv.Error) as error:  # pyarrow's errors are ValueErrors/OSErrors
        raise DigitlabError(f"{path}: cannot read this list ({error})") from None
    named = [column for column in LIST_COLUMNS if column in table.column_names]
    if not named:
        raise DigitlabError(
            f"{path}: a Parquet list needs a 'path' or 'url' column (it has: "
            f"{', '.join(table.column_names)})"
        )
    return [str(value) for value in table.column(named[0]).to_pylist() if value]


class _Sources:
    """A worker's way to the bytes of each named image: a file's path, an image inside a tar
    archive (each archive opened once per shard), or a URL (downloaded, tried again on
    network errors and 5xx answers). A source that cannot be had is that image's ImageError."""

    def __init__(self):
        self.archives: dict[str, tarfile.TarFile] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        for archive in self.archives.values():
            archive.close()

    def get_many(self, names: Iterable[str]) -> list[tuple[str, Path | bytes | ImageError]]:
        """(name, source) for each name, in order; URLs downloaded ``DOWNLOADS`` at a time."""
        names = list(names)
        urls = [name for name in names if name.lower().startswith(URL_PREFIXES)]
        downloaded = {}
        if urls:  # (files and archive members need no threads)
            with ThreadPoolExecutor(DOWNLOADS) as pool:
                downloaded = dict(zip(urls, pool.map(self.get, urls), strict=True))
        return [
            (name, downloaded[name] if name in downloaded else self.get(name)) for name in names
        ]

    def get(self, name: str) -> Path | bytes | ImageError:
        try:
            if name.lower().startswith(URL_PREFIXES):
                return _download(name)
            inside = _archive_member(name)
            return self._member(*inside) if inside else Path(name)
        except ImageError as error:
            return error.naming(name)

    def _member(self, archive_path: str, member: str) -> bytes:
        if archive_path not in self.archives:
            try:
                self.archives[archive_path] = tarfile.open(archive_path)
            except TAR_ERRORS as error:
                raise ImageError(f"cannot open its archive ({error})") from None
        archive = self.archives[archive_path]
        try:
            info = archive.getmember(member)
            if not info.isfile():
                raise ImageError("not a file in its archive")
            if info.size > MAX_FILE_BYTES:
                raise ImageError(f"over {MAX_FILE_BYTES // 2**20} MiB: too large")
            return archive.extractfile(info).read()
        except KeyError:
            raise ImageError("not in its archive") from None
        except TAR_ERRORS as error:
            raise ImageError(f"cannot read it from its archive ({error})") from None


def _archive_member(name: str) -> tuple[str, str] | None:
    """``archive.tar/its/name.png`` -> (``archive.tar``, ``its/name.png``), when that
    archive is a file; else None."""
    lower = name.lower()
    for suffix in TAR_SUFFIXES:
        at = lower.find(suffix + "/")
        while at >= 0:
            archive = name[: at + len(suffix)]
            if Path(archive).is_file():
                return archive, name[at + len(suffix) + 1 :]
            at = lower.find(suffix + "/", at + 1)
    return None


def _download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": f"digitlab/{__version__}"})
    for attempt in range(1, URL_TRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
                data = response.read(MAX_FILE_BYTES + 1)
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == URL_TRIES:
                reason = f"could not download it: HTTP {error.code} {error.reason}"
                raise ImageError(reason) from None
        except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: a bad URL
            if attempt == URL_TRIES or isinstance(error, ValueError):
                reason = getattr(error, "reason", error)
                raise ImageError(f"could not download it: {reason}") from None
        else:
            if len(data) > MAX_FILE_BYTES:
                raise ImageError(f"over {MAX_FILE_BYTES // 2**20} MiB: too large")
            return data
        time.sleep(attempt)  # 1 s, then 2 s
    raise AssertionError("unreachable")


def shard_file(index: int, format: str) -> str:
    return f"part-{index:05d}.{format}"


@dataclass(frozen=True)
class Task:
    """One shard: what a worker needs to read it and write its file."""

    index: int
    paths: tuple[str, ...]
    run: str  # the run folder (on a cluster: a path every worker can read)
    number: bool
    output: str  # the shard's file
    format: str


@dataclass
class Summary:
    shards: int
    skipped: int  # done by an earlier run
    images: int  # read now
    errors: int  # of those, images that could not be read (error rows)
    workers: int


_PREDICTORS: dict = {}  # per worker process: the model of each run folder, loaded once


def _predictor(run: str):
    from digitlab.predict import Predictor

    if run not in _PREDICTORS:
        _PREDICTORS[run] = Predictor.from_run(Path(run))
    return _PREDICTORS[run]


def read_shard(task: Task) -> dict:
    """Read one shard's images and write its file (runs on a worker)."""
    predictor = _predictor(task.run)
    rows = []
    with _Sources() as sources:
        for start in range(0, len(task.paths), GROUP):  # a group's bytes in memory at a time
            named = sources.get_many(task.paths[start : start + GROUP])
            readable = [pair for pair in named if not isinstance(pair[1], ImageError)]
            answers = predictor.predict_many(readable, number=task.number, workers=1)  # in order
            for path, source in named:
                answer = source if isinstance(source, ImageError) else next(answers)[1]
                if isinstance(answer, ImageError):  # this image only
                    rows.append({"path": path, "error": answer.reason})
                else:
                    rows.append({"path": path, **answer.to_dict(), "error": None})
    _write_rows(rows, Path(task.output), task.format, task.number)
    return {
        "shard": task.index,
        "images": len(rows),
        "errors": sum(row["error"] is not None for row in rows),
    }


def _schema(number: bool):
    import pyarrow as pa

    digit_fields = [
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("confidence", pa.float64()),
        ("probabilities", pa.list_(pa.float64())),
        ("is_digit", pa.bool_()),
        ("digit_score", pa.float64()),
    ]
    if number:
        fields = [
            ("text", pa.string()),
            ("confidence", pa.float64()),
            ("reader", pa.string()),
            ("is_number", pa.bool_()),
            ("number_score", pa.float64()),
            ("digits", pa.list_(pa.struct([*digit_fields, ("x", pa.float64())]))),
        ]
    else:
        fields = digit_fields
    return pa.schema([("path", pa.string()), *fields, ("error", pa.string())])


def _write_rows(rows: list[dict], path: Path, format: str, number: bool) -> None:
    if format == "jsonl":
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema(number))
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_results(output: Path) -> list[dict]:
    """Every row of a batch's output folder, shard by shard (for tests and small outputs)."""
    plan = _read_plan(Path(output))
    rows: list[dict] = []
    for index in range(len(plan["shards"])):
        path = Path(output) / shard_file(index, plan["format"])
        if plan["format"] == "jsonl":
            rows.extend(json.loads(line) for line in path.read_text().splitlines())
        else:
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(path).to_pylist())
    return rows


def _read_plan(output: Path) -> dict:
    try:
        return json.loads((output / PLAN_FILE).read_text())
    except (OSError, ValueError) as error:
        raise DigitlabError(f"{output / PLAN_FILE} is missing or damaged ({error})") from None


def plan_shards(
    paths: list[str], output: Path, run: Path, number: bool, shard_size: int, format: str
) -> dict:
    """The shards of this job: read from ``output/shards.json`` when an earlier run of the same
    job wrote it (so its finished shards are skipped), else made and written there.

    A folder holding another job's results (other images, model or settings) is refused:
    mixing two jobs' shards would lose images.
    """
    wanted = {
        "run": str(run),
        "number": number,
        "format": format,
        "shards": [paths[start : start + shard_size] for start in range(0, len(paths), shard_size)],
    }
    if (output / PLAN_FILE).exists():
        earlier = _read_plan(output)
        if earlier != wanted:
            raise DigitlabError(
                f"{output} holds the results of another batch (other images, model or "
                "settings): give a new --output folder"
            )
        return earlier
    if output.exists() and any(output.iterdir()):
        raise DigitlabError(f"{output} is not empty and holds no batch: give a new --output folder")
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / PLAN_FILE, json.dumps(wanted))
    return wanted


def _client(address: str | None, workers: int | None):
    """A client of the cluster at ``address``, or of a new local cluster (one single-threaded
    worker process per core, or ``workers``)."""
    distributed = _cluster_modules()
    if address:
        try:
            return distributed.Client(address, timeout=20)
        except (OSError, TimeoutError) as error:
            raise DigitlabError(f"cannot reach the Dask scheduler at {address}: {error}") from None
    cluster = distributed.LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # the scheduler's HTTP port: any free one (8787 may be taken)
        env=WORKER_ENV,
    )
    return distributed.Client(cluster)


def run_batch(
    paths: Iterable[str],
    output: Path,
    run: Path,
    number: bool = False,
    address: str | None = None,
    workers: int | None = None,
    shard_size: int = SHARD_SIZE,
    format: str = "parquet",
    client=None,
    report: Callable[[str], None] = print,
) -> Summary:
    """Read ``paths`` with the model of ``run`` on a Dask cluster, into ``output``.

    ``client``: a ``dask.distributed.Client`` to use (else one of ``address``, else of a new
    local cluster, closed at the end).
    """
    if format not in FORMATS:
        raise DigitlabError(f"unknown output format {format!r}: choose {' or '.join(FORMATS)}")
    output = Path(output)
    plan = plan_shards(sorted(set(paths)), output, Path(run), number, shard_size, format)
    tasks = [
        Task(index, tuple(shard), plan["run"], number, str(output / shard_file(index, format)),
             format)
        for index, shard in enumerate(plan["shards"])
    ]  # fmt: skip
    to_do = [task for task in tasks if not Path(task.output).exists()]
    skipped = len(tasks) - len(to_do)
    if skipped:
        report(f"{skipped} of {len(tasks)} shards already done in {output}: skipped")
    own_client = client is None
    client = client or _client(address, workers)
    try:
        _cluster_modules()
        worker_count = len(client.scheduler_info(n_workers=-1)["workers"])
        report(
            f"reading {sum(len(t.paths) for t in to_do):,} images in {len(to_do)} shards on "
            f"{worker_count} Dask worker(s) ({address or 'a local cluster'})"
        )
        images = errors = 0
        futures = client.map(read_shard, to_do, pure=False)
        for done, future in enumerate(_as_completed(futures), start=1):
            result = future.result()  # a shard that failed on every try raises here
            images, errors = images + result["images"], errors + result["errors"]
            report(
                f"  shard {result['shard'] + 1}/{len(tasks)}: {result['images']} images, "
                f"{result['errors']} unreadable ({done}/{len(to_do)} done)"
            )
    finally:
        if own_client:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
    return Summary(len(tasks), skipped, images, errors, worker_count)


def _as_completed(futures):
    return _cluster_modules().as_completed(futures)
