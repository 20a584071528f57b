"""digitlab batch: very many images on a local Dask cluster; bad images, resuming, a killed
worker."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from dask.distributed import Client, LocalCluster
from PIL import Image

from conftest import QuietHandler, free_port, static_host
from digitlab import artifacts
from digitlab.batch import list_sources, read_results, run_batch
from digitlab.cli import cli


@pytest.fixture(scope="module")
def cluster():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        yield client


def write_images(folder: Path, digits: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """MNIST test digits as PNG files named by their label; returns path -> true label."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for index, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        path = folder / f"{index:04d}-{label}.png"
        Image.fromarray(digit).save(path)
        truth[str(path)] = int(label)
    return truth


@pytest.fixture
def images(tmp_path, mnist_arrays):
    """40 real test digits, two copies of one of them, and three files that are no image."""
    _, (x_test, y_test) = mnist_arrays
    folder = tmp_path / "scans"
    truth = write_images(folder / "a", x_test[:40], y_test[:40])
    for copy in ("copy-1.png", "copy-2.png"):  # the same image twice, under two names
        (folder / "b").mkdir(exist_ok=True)
        (folder / "b" / copy).write_bytes(Path(next(iter(truth))).read_bytes())
    (folder / "b" / "truncated.png").write_bytes(Path(next(iter(truth))).read_bytes()[:60])
    (folder / "b" / "notes.png").write_text("not an image")
    (folder / "b" / "empty.jpg").write_bytes(b"")
    return folder, truth


def test_a_batch_reads_every_image_once_with_errors_as_rows(cluster, images, tmp_path):
    folder, truth = images
    ready = artifacts.ready_run("digit")
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    summary = run_batch(
        paths, tmp_path / "out", ready, shard_size=8, client=cluster, report=lambda line: None
    )
    assert (summary.shards, summary.images, summary.errors) == (6, 45, 3)

    rows = read_results(tmp_path / "out")
    assert Counter(row["path"] for row in rows) == Counter(paths)  # each image exactly once
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"truncated.png", "notes.png", "empty.jpg"}
    assert "not an image file" in errors["notes.png"]
    right = [row["label"] == truth[row["path"]] for row in rows if row["path"] in truth]
    assert sum(right) >= 39  # the ready CNN on 40 real test digits
    copies = [row for row in rows if "copy-" in row["path"]]
    assert copies[0]["probabilities"] == copies[1]["probabilities"]
    assert {"label", "confidence", "probabilities", "is_digit", "digit_score"} <= set(rows[0])
    # the workers ran the NumPy runtime: none of them imported Keras
    assert not any(cluster.run(lambda: "keras" in sys.modules).values())


def test_running_again_skips_the_finished_shards(cluster, images, tmp_path):
    folder, _ = images
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    output = tmp_path / "out"
    ready = artifacts.ready_run("digit")
    run_batch(paths, output, ready, shard_size=10, format="jsonl", client=cluster,
              report=lambda line: None)  # fmt: skip
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*")}
    (output / "part-00002.jsonl").unlink()  # as if the job had died before this shard
    lines = []
    summary = run_batch(paths, output, ready, shard_size=10, format="jsonl", client=cluster,
                        report=lines.append)  # fmt: skip
    assert (summary.skipped, summary.images) == (4, 10)
    assert "4 of 5 shards already done" in lines[0]
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*")}
    assert {name for name in after if after[name] != before.get(name)} == {"part-00002.jsonl"}
    assert len(read_results(output)) == len(paths)


def test_a_folder_of_another_job_is_refused(cluster, images, tmp_path):
    folder, _ = images
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    ready = artifacts.ready_run("digit")
    run_batch(paths, tmp_path / "out", ready, shard_size=10, client=cluster,
              report=lambda line: None)  # fmt: skip
    result = CliRunner().invoke(
        cli, ["batch", str(folder / "a"), "-o", str(tmp_path / "out"), "--shard-size", "10"]
    )
    assert result.exit_code == 1 and "holds the results of another batch" in result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["batch", str(folder / "a"), "-o", str(tmp_path / "mine")])
    assert result.exit_code == 1 and "not empty and holds no batch" in result.output
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep"


def test_the_command_on_a_local_cluster(images, tmp_path):
    folder, truth = images
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(list(truth)[:12]) + "\n")
    result = CliRunner().invoke(
        cli, ["batch", str(listing), "-o", str(tmp_path / "out"), "--workers", "1",
              "--shard-size", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "12 images read (0 unreadable: error rows) in 3 shards" in result.stdout
    assert "reading with the ready-made cnn" in result.stderr
    rows = read_results(tmp_path / "out")
    assert [row["path"] for row in rows] == sorted(list(truth)[:12])


class FlakyHost(QuietHandler):
    """A web host whose /flaky/ images fail once with 503 before they are served."""

    failed: set[str] = set()

    def do_GET(self):
        if self.path.startswith("/flaky/") and self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "busy")
            return
        super().do_GET()


def test_tar_shards_lists_and_urls_each_image_once(cluster, tmp_path, mnist_arrays):
    """What an office hands over: tar shards of scans, a CSV of paths, a Parquet list of URLs
    (one missing on the host, one failing once, one host that is down)."""
    _, (x_test, y_test) = mnist_arrays
    truth = write_images(tmp_path / "scans", x_test[:24], y_test[:24])
    files = list(truth)
    with tarfile.open(tmp_path / "shard-0.tar", "w") as archive:
        for path in files[:8]:
            archive.add(path, arcname=f"forms/{Path(path).name}")
        notes = tarfile.TarInfo("forms/notes.png")
        notes.size = 4
        archive.addfile(notes, io.BytesIO(b"text"))
        archive.add(tmp_path / "scans", arcname="skipped-folder", recursive=False)
    with (tmp_path / "list.csv").open("w") as listing:
        listing.write("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(files[8:14])))
    web = tmp_path / "www"
    for folder, chosen in (("ok", files[14:20]), ("flaky", files[20:22])):
        (web / folder).mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, web / folder)
    with static_host(web, FlakyHost) as host:
        urls = [f"{host}/{p.parent.name}/{p.name}" for p in sorted(web.rglob("*.png"))]
        urls += [f"{host}/ok/missing.png", f"http://127.0.0.1:{free_port()}/down.png"]
        pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
        names = list_sources(
            [str(tmp_path / "shard-0.tar"), str(tmp_path / "list.csv"),
             str(tmp_path / "urls.parquet"), files[23]]
        )  # fmt: skip
        assert len(names) == 9 + 6 + 10 + 1  # the tar's folder entry is no image
        summary = run_batch(names, tmp_path / "out", artifacts.ready_run("digit"), shard_size=7,
                            client=cluster, report=lambda line: None)  # fmt: skip
    rows = read_results(tmp_path / "out")
    assert Counter(row["path"] for row in rows) == Counter(names)
    errors = {row["path"].rsplit("/", 1)[-1]: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"notes.png", "missing.png", "down.png"} and summary.errors == 3
    assert "HTTP 404" in errors["missing.png"] and "could not download" in errors["down.png"]
    label_of = {Path(path).name: label for path, label in truth.items()}
    read = [row for row in rows if not row["error"]]
    assert len(read) == 23  # the flaky ones were read on their second try
    right = sum(row["label"] == label_of[row["path"].rsplit("/", 1)[-1]] for row in read)
    assert right >= 22


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("urls.parquet", None, "needs a 'path' or 'url' column"),
        ("broken.tar", b"not a tar archive at all" * 40, "not a readable tar archive"),
        ("absent.png", None, "no such file or folder"),
    ],
)
def test_unusable_inputs_are_one_line_errors(name, content, message, tmp_path):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"file": ["a.png"]}), path)
    elif content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_csv_without_a_header_lists_its_first_column(tmp_path):
    (tmp_path / "plain.csv").write_text("a.png,7\nb.png,1\n")
    assert list_sources([str(tmp_path / "plain.csv")]) == ["a.png", "b.png"]


def test_the_command_joins_a_running_cluster_or_says_it_cannot(cluster, images, tmp_path):
    folder, truth = images
    address = cluster.scheduler.address
    before = set(cluster.scheduler_info()["workers"])
    result = CliRunner().invoke(
        cli, ["batch", str(folder / "a"), "-o", str(tmp_path / "out"), "--address", address]
    )
    assert result.exit_code == 0, result.output
    assert f"on 2 Dask worker(s) ({address})" in result.stderr
    assert len(read_results(tmp_path / "out")) == 40
    assert set(cluster.scheduler_info()["workers"]) == before  # the cluster is left running
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        cli, ["batch", str(folder / "a"), "-o", str(tmp_path / "out2"), "--address", nowhere]
    )
    assert (
        result.exit_code == 1 and f"cannot reach the Dask scheduler at {nowhere}" in result.output
    )
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_no_image(tmp_path, mnist_arrays):
    """kill -9 of a worker in the middle of a job: the job ends, every image once."""
    _, (x_test, y_test) = mnist_arrays
    truth = write_images(tmp_path / "scans", x_test[:3000], y_test[:3000])
    digitlab = Path(sys.executable).with_name("digitlab")
    job = subprocess.Popen(
        [str(digitlab), "batch", str(tmp_path / "scans"), "-o", str(tmp_path / "out"),
         "--workers", "2", "--shard-size", "100", "--format", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DIGITLAB_RUNS": str(tmp_path / "runs")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out").glob("part-*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first shard is written: the workers are busy
        workers = [
            child for child in psutil.Process(job.pid).children(recursive=True)
            if "spawn" in " ".join(child.cmdline())
        ]  # fmt: skip
        assert workers, "no worker process found"
        os.kill(workers[0].pid, signal.SIGKILL)
        killed_at = len(list((tmp_path / "out").glob("part-*")))
        stdout, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, stderr[-2000:]
    assert killed_at < 30  # the kill came while shards were still being read
    rows = read_results(tmp_path / "out")
    assert Counter(row["path"] for row in rows) == Counter(list(truth))
    assert "3,000 images read" in stdout
