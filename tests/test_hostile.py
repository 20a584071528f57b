"""Hostile and careless input, end to end: every check here failed before digitlab was hardened
(docs/reliability.md). Bad files fail only themselves, malformed requests are 4xx with an
{"error"} body, slow clients starve no one, killed writers leave nothing broken behind."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from conftest import serving
from corpus import slowest_file_seconds, write_corpus
from digitlab import artifacts, datasets, preprocess
from digitlab.cli import cli
from digitlab.config import ServeConfig
from digitlab.predict import Predictor
from digitlab.web.app import create_app

DIGITLAB = str(Path(sys.executable).with_name("digitlab"))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- files that fight back


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"), count=300, seed=0)


@pytest.mark.parametrize("number", [False, True], ids=["digit", "number"])
def test_every_corpus_file_gets_its_own_line_and_no_traceback(corpus, mnist_run, number):
    folder = corpus[0].parent
    arguments = ["predict", "--run", str(mnist_run), "--json", str(folder)]
    result = CliRunner().invoke(cli, arguments + (["--number"] if number else []))
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(corpus)  # one line per file, the broken ones included
    assert sorted(r["path"] for r in records) == sorted(map(str, corpus))
    errors = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    assert "nan-float.tif" not in errors or "cannot be read" not in errors["nan-float.tif"]
    assert "not an image file" in errors["eps-as-png.png"]  # never handed to Ghostscript
    assert "too many pixels" in errors["bomb-float.tif"]
    assert "1x1 pixels" in errors["one-pixel.png"]
    assert "long and narrow" in errors["wide.png"]  # not "smaller than 2x2"
    assert result.stderr == ""  # no Pillow warnings, no traceback: the JSON says it all
    assert result.exit_code == 1


def test_no_corpus_file_takes_over_two_seconds(corpus):
    assert slowest_file_seconds(corpus) < 2.0


def test_a_good_image_keeps_its_answer_beside_a_nan_tiff(mnist_run, mnist_arrays, tmp_path):
    _, (x_test, _) = mnist_arrays
    (tmp_path / "good.png").write_bytes(png(255 - x_test[0]))
    nan = np.full((32, 32), np.nan, np.float32)
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    arguments = ["predict", "--run", str(mnist_run), str(tmp_path / "good.png")]
    result = CliRunner().invoke(cli, [*arguments, str(tmp_path / "nan.tif")])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{tmp_path / 'good.png'}: 7 (")
    assert "nan.tif: error: no digit found" in result.stderr


def test_files_that_are_not_regular_files_are_refused_at_once(mnist_run, tmp_path):
    fifo = tmp_path / "some.fifo"
    os.mkfifo(fifo)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    started = time.perf_counter()
    result = CliRunner().invoke(
        cli, ["predict", "--run", str(mnist_run), str(fifo), str(tmp_path / "zero.png")]
    )
    assert time.perf_counter() - started < 5  # no hang on the FIFO, no endless read
    assert result.exit_code == 1
    assert result.stderr.count("is not a regular file") == 2


def test_standard_input_is_read_only_up_to_the_limit(mnist_run, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_FILE_BYTES", 1000)
    result = CliRunner().invoke(cli, ["predict", "--run", str(mnist_run), "-"], input=b"x" * 5000)
    assert result.exit_code == 1 and "-: error: over 0 MiB: too large" in result.stderr


# ------------------------------------------------------------------------- the HTTP API


@pytest.fixture(scope="module")
def client(mnist_run):
    with TestClient(create_app(Predictor.from_run(mnist_run))) as test_client:
        yield test_client


MALFORMED_JSON = [
    b"[" * 5000 + b"]" * 5000,
    b'{"pixels": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"pixels": [[1' + b"0" * 400 + b"]]}",
    b'{"pixels": [[' + b"9" * 5000 + b"]]}",
    b'{"pixels": [[1e999]]}',
    b'{"pixels": NaN}',
    b'{"pixels": [[null, true, "x"]]}',
    b'{"pixels": {"a": 1}}',
    b'{"pixels": 5}',
    b'{"pixels": []}',
    b'{"pixels": [[]]}',
    b'"pixels"',
    b"null",
    b"\xff\xfe",
    b'{"pixels": [' + b"[0]," * 27 + b"[0]]}",
    b'{"images": 5}',
    b'{"images": [{"pixels": "x"}]}',
    b'{"images": [[1e999]]}',
]


@pytest.mark.parametrize("body", MALFORMED_JSON, ids=range(len(MALFORMED_JSON)))
@pytest.mark.parametrize("route", ["/api/predict", "/api/predict/batch"])
def test_malformed_json_is_a_4xx(client, body, route):
    response = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500 or (
        route.endswith("batch") and response.status_code == 200
    )
    assert "error" in response.json() or "results" in response.json()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/nowhere", {}, 404),
        ("DELETE", "/api/predict", {}, 405),
        ("GET", "/api/predict", {}, 405),
        ("POST", "/api/predict?number=maybe", {"content": b"x"}, 422),
        (
            "POST",
            "/api/predict",
            {
                "content": b'--xx\r\nContent-Disposition: form-data; name="f"\r\n\r\nabc',
                "headers": {"Content-Type": "multipart/form-data; boundary=xx"},
            },
            422,
        ),
        (
            "POST",
            "/api/predict",
            {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data"}},
            400,
        ),
    ],
)
def test_every_error_body_is_error_json(client, method, path, kwargs, status):
    response = client.request(method, path, **kwargs)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and response.json()["error"]


def test_head_and_options_answer(client):
    for path in ("/", "/api/health"):
        assert client.head(path).status_code == 200
        options = client.options(path)
        assert options.status_code == 204 and "GET" in options.headers["allow"]
    assert "POST" in client.options("/api/predict").headers["allow"]


def test_huge_or_countless_headers_are_refused(client):
    big = client.get("/api/health", headers={"X-Big": "a" * 1_000_000})
    assert big.status_code == 431
    many = client.get("/api/health", headers={f"X-{i}": "1" for i in range(5000)})
    assert many.status_code == 431 and many.json() == {
        "error": "request headers too large or too many"
    }


def test_openapi_declares_the_request_bodies(client):
    paths = client.get("/openapi.json").json()["paths"]
    body = paths["/api/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "multipart/form-data", "application/json"} <= set(body)
    assert {"200", "413", "415", "422", "503"} <= set(paths["/api/predict"]["post"]["responses"])
    assert "requestBody" in paths["/api/predict/batch"]["post"]


ROUTES = ["/", "/api/health", "/api/model", "/api/predict", "/api/predict/batch", "/docs", "/x"]
CONTENT_TYPES = [
    "image/png",
    "image/jpeg",
    "application/json",
    "multipart/form-data; boundary=b",
    "multipart/form-data",
    "text/plain",
    "",
    "image/",
    "application/json; charset=latin-1",
]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "PATCH"]),
    route=st.sampled_from(ROUTES),
    query=st.sampled_from(["", "?number=true", "?number=0", "?number=%ff", "?x=" + "y" * 500]),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=st.one_of(
        st.binary(max_size=2000),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
            lambda children: (
                st.lists(children, max_size=30)
                | st.dictionaries(st.sampled_from(["pixels", "images", "x"]), children)
            ),
            max_leaves=200,
        ).map(lambda value: json.dumps(value).encode()),
    ),
)
def test_no_request_gets_a_500(client, method, route, query, content_type, body):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.request(method, route + query, content=body, headers=headers)
    assert response.status_code < 500 or response.status_code == 503, response.text


# ------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(mnist_run, tmp_path_factory):
    """`digitlab serve` with a 2 s body timeout, its log in a file."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(mnist_run, log, "--body-timeout", "2") as (url, port):
        yield url, port, log


def _slow_sender(port: int, stop: threading.Event) -> tuple[int | None, float]:
    """Declare 1,000 bytes and send 1 byte every 0.5 s; return the status and when it came."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        connection.settimeout(0.5)
        while not stop.is_set():
            try:
                answer = connection.recv(200)
                if answer:
                    return int(answer.split()[1]), time.perf_counter() - started
                return None, time.perf_counter() - started
            except TimeoutError:
                try:
                    connection.sendall(b"x")
                except OSError:
                    return None, time.perf_counter() - started
    return None, time.perf_counter() - started


@pytest.mark.slow
def test_slow_uploads_do_not_lock_anyone_out(server, mnist_arrays):
    url, port, _ = server
    _, (x_test, y_test) = mnist_arrays
    stop = threading.Event()
    with ThreadPoolExecutor(16) as slow_pool:
        slow = [slow_pool.submit(_slow_sender, port, stop) for _ in range(16)]
        time.sleep(0.5)  # every slow client is connected and sending
        statuses = []
        with httpx.Client(timeout=10) as http:
            for index in range(48):
                response = http.post(
                    f"{url}/api/predict", json={"pixels": x_test[index % 10].tolist()}
                )
                statuses.append(response.status_code)
        slow_results = [future.result(timeout=15) for future in slow]
        stop.set()
    assert statuses == [200] * 48
    assert [status for status, _ in slow_results] == [408] * 16
    assert max(seconds for _, seconds in slow_results) < 6  # 2 s timeout, not hanging


@pytest.mark.slow
def test_urllib_reads_the_413_of_an_oversize_body(server):
    url, _, _ = server
    body = b"x" * (3 * 2**20)  # over the 2 MiB default
    statuses = []
    for _ in range(20):
        request = urllib.request.Request(
            f"{url}/api/predict", data=body, headers={"Content-Type": "image/png"}
        )
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            statuses.append((error.code, json.loads(error.read())["error"][:24]))
        except OSError as error:
            statuses.append((type(error).__name__, str(error)))
    assert statuses == [(413, "request body over the li")] * 20


@pytest.mark.slow
def test_a_client_that_hangs_up_is_not_a_server_error(server):
    url, port, log = server
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 5000\r\n\r\n" + b"x" * 100
            )
    time.sleep(0.5)
    assert httpx.get(f"{url}/api/health").status_code == 200
    text = log.read_text()
    assert "POST /api/predict 499" in text
    assert "Traceback" not in text and " 500 " not in text


# ------------------------------------------------------- killed writers, concurrent writers


def _run_seconds(arguments: list[str], env: dict) -> float:
    """How long the command takes when left alone: the kills are aimed at its end, where
    it writes."""
    started = time.perf_counter()
    subprocess.run(arguments, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _kill_at(arguments: list[str], env: dict, seconds: float) -> None:
    process = subprocess.Popen(
        arguments, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def kill_fetches(home: Path, source: Path, rounds: int, seed: int = 0) -> dict:
    """Kill `data fetch --from` at random moments of its run, from an empty cache each time."""
    rng = random.Random(seed)
    env = {**os.environ, "DIGITLAB_HOME": str(home), "DIGITLAB_OFFLINE": "1"}
    command = [DIGITLAB, "data", "fetch", "--from", str(source)]
    cache = home / "data" / "mnist"
    full = _run_seconds(command, env)
    corrupt = left = 0
    for _ in range(rounds):
        for path in cache.glob("*-ubyte"):  # start again from nothing
            path.unlink()
        _kill_at(command, env, rng.uniform(0.3 * full, 1.1 * full))
        for path in cache.glob("*-ubyte"):  # every file at a final path verifies
            corrupt += datasets.sha256_hex(path.read_bytes()) != datasets.MNIST.sha256[path.name]
        left += len(_leftovers(home))  # each start removes the ones before it
    subprocess.run(command, env=env, check=True, capture_output=True)  # the next start
    return {
        "kills": rounds,
        "full_run_seconds": round(full, 2),
        "corrupt_files_at_final_paths": corrupt,
        "leftovers_found_after_kills": left,
        "leftovers_after_next_start": len(_leftovers(home)),
    }


def kill_trainings(runs: Path, train: list[str], rounds: int, seed: int = 1) -> dict:
    """Kill `digitlab train` at random moments of its last seconds (saving the run)."""
    rng = random.Random(seed)
    env = {**os.environ, "DIGITLAB_RUNS": str(runs), "DIGITLAB_OFFLINE": "1"}
    full = _run_seconds(train, env)
    broken_latest = left = 0
    for _ in range(rounds):
        _kill_at(train, env, rng.uniform(full - 4.0, full + 0.2))
        latest = runs / "latest"
        try:
            artifacts.read_manifest(artifacts.resolve_run(latest))
        except Exception:  # a broken latest, whatever the reason
            broken_latest += 1
        left += len(_leftovers(runs))  # each start removes the ones before it
    listing = subprocess.run(
        [DIGITLAB, "runs"], env=env, capture_output=True, text=True, check=False
    )
    return {
        "kills": rounds,
        "full_run_seconds": round(full, 2),
        "broken_latest": broken_latest,
        "leftovers_found_after_kills": left,
        "leftovers_after_next_start": len(_leftovers(runs)),
        "runs_exit_status": listing.returncode,
        "tracebacks": listing.stderr.count("Traceback"),
    }


@pytest.mark.slow
def test_killed_data_fetches_leave_no_corrupt_file_and_no_leftover(tmp_path, mnist_files):
    from conftest import REAL_HOME

    result = kill_fetches(tmp_path / "home", REAL_HOME / "data" / "mnist", rounds=4)
    assert result["corrupt_files_at_final_paths"] == 0
    assert result["leftovers_after_next_start"] == 0


@pytest.mark.slow
def test_killed_trainings_never_break_runs_and_leave_no_leftover(tmp_path, tiny_folder):
    train = [DIGITLAB, "train", "--dataset", str(tiny_folder), "--epochs", "2"]
    result = kill_trainings(tmp_path / "runs", train, rounds=4)
    assert result["broken_latest"] == 0 and result["tracebacks"] == 0
    assert result["runs_exit_status"] == 0 and result["leftovers_after_next_start"] == 0


@pytest.mark.slow
def test_two_trainings_at_once_both_keep_their_model(tmp_path, tiny_folder):
    env = {**os.environ, "DIGITLAB_RUNS": str(tmp_path / "runs"), "DIGITLAB_HOME": str(tmp_path)}
    train = [DIGITLAB, "train", "--dataset", str(tiny_folder), "--epochs", "1"]
    processes = [
        subprocess.Popen(train, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 2
    for run in runs:
        assert (run / "model.keras").is_file()


def test_serve_config_defaults_are_the_documented_limits():
    limits = ServeConfig()
    assert limits.max_body_bytes == 2 * 2**20 and limits.max_concurrent == 16
    assert limits.body_timeout_seconds == 20 and limits.max_receiving == 64
