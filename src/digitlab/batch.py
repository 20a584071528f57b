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

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from digitlab import DigitlabError
from digitlab.fileio import atomic_path, atomic_write_text

SHARD_SIZE = 1_000  # images per task: ~0.5-1 s of work, so scheduling costs little
PLAN_FILE = "shards.json"
FORMATS = ("parquet", "jsonl")
# A worker is one process with one thread (the NumPy runtime and preprocessing are one core's
# work each) and one BLAS thread.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cluster_modules():
    try:
        import dask.distributed
    except ImportError:
        raise DigitlabError("digitlab batch needs Dask: pip install 'digitlab[cluster]'") from None
    return dask.distributed


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
    named = [(path, Path(path)) for path in task.paths]
    rows = []
    for path, answer in predictor.predict_many(named, number=task.number, workers=1):
        if hasattr(answer, "reason"):  # an ImageError: this image only
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
