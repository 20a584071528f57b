"""Shared fixtures: a temporary DIGITLAB_HOME and runs folder, and small generated digit data."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from digitlab import config, datasets

# Captured before any test swaps DIGITLAB_HOME: where `make data` put the real MNIST files.
REAL_HOME = config.digitlab_home()


@pytest.fixture(autouse=True)
def digitlab_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DIGITLAB_HOME", str(home))
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("DIGITLAB_OFFLINE", raising=False)
    return home


def use_real_mnist_cache(patch: pytest.MonkeyPatch) -> None:
    """Point digitlab at the cache that `make test` fills, and never at the network."""
    patch.setenv("DIGITLAB_HOME", str(REAL_HOME))
    patch.setenv("DIGITLAB_OFFLINE", "1")


@pytest.fixture(scope="session")
def mnist_files() -> datasets.DataFiles:
    """The real MNIST files, verified, read once per test session."""
    with pytest.MonkeyPatch.context() as patch:
        use_real_mnist_cache(patch)
        return datasets.ensure("mnist", report=lambda line: None)


@pytest.fixture(scope="session")
def mnist_arrays(mnist_files) -> datasets.Arrays:
    """``(x_train, y_train), (x_test, y_test)`` of the real MNIST."""
    return datasets.to_arrays(mnist_files)


@pytest.fixture
def real_mnist(mnist_files, monkeypatch) -> datasets.DataFiles:
    """The real MNIST files, with the test's DIGITLAB_HOME on their cache (for CLI tests)."""
    use_real_mnist_cache(monkeypatch)
    return mnist_files


def render_digit(digit: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A light-on-dark digit drawn with a font, jittered in place, size and stroke: MNIST-like."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(size * rng.uniform(0.6, 0.8)))
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (size - (right - left)) / 2 - left + rng.uniform(-2, 2)
    y = (size - (bottom - top)) / 2 - top + rng.uniform(-2, 2)
    draw.text(
        (x, y),
        str(digit),
        fill=255,
        font=font,
        stroke_width=int(rng.integers(1, 3)),
        stroke_fill=255,
    )
    return np.asarray(image, dtype=np.uint8)


def make_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, 28, 28) uint8 images of rendered digits and their uint8 labels, classes cycling."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = np.stack([render_digit(int(label), rng) for label in labels])
    return images, labels


def write_idx_folder(folder: Path, data: datasets.Arrays, gzipped: bool = False) -> dict:
    """Write the four IDX files of ``data``; return {file name: raw bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = data
    arrays = {
        "train_images": x_train,
        "train_labels": y_train,
        "test_images": x_test,
        "test_labels": y_test,
    }
    written = {}
    for role, array in arrays.items():
        name = datasets.IDX_NAMES[role]
        raw = datasets.encode_idx(array)
        written[name] = raw
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return written


@pytest.fixture(scope="session")
def tiny_data() -> datasets.Arrays:
    return make_digits(300, seed=1), make_digits(100, seed=2)


@pytest.fixture
def tiny_folder(tmp_path, tiny_data) -> Path:
    folder = tmp_path / "tiny"
    write_idx_folder(folder, tiny_data)
    return folder


def pinned_spec(raw: dict, sources: tuple = (), name: str = "tiny") -> datasets.DatasetSpec:
    return datasets.DatasetSpec(
        name=name,
        sha256={n: datasets.sha256_hex(b) for n, b in raw.items()},
        label_names=tuple(str(d) for d in range(10)),
        sources=sources,
    )


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, mnist_files, mnist_arrays) -> Path:
    """A run folder with the tutorial's MLP trained 2 epochs on the real MNIST (~97.5%)."""
    from digitlab import artifacts, training
    from digitlab.config import TrainConfig

    result = training.train(
        TrainConfig(epochs=2), mnist_arrays, report=lambda line: None, verbose=0
    )
    _, (x_test, y_test) = mnist_arrays
    root = tmp_path_factory.mktemp("runs")
    return artifacts.save_run(result, mnist_files, x_test, y_test, root=root)


@pytest.fixture(scope="session")
def reader_run(tmp_path_factory, mnist_files, mnist_arrays) -> Path:
    """A number reader trained on fewer numbers and epochs than its defaults, on numbers
    composed from the real MNIST (~3 minutes), in a runs folder of its own."""
    from digitlab import artifacts, models, training

    config = models.get("reader").config(numbers=READER_TEST_NUMBERS, epochs=READER_TEST_EPOCHS)
    result = training.train(config, mnist_arrays, report=lambda line: None, verbose=0)
    _, (x_test, y_test) = mnist_arrays
    root = tmp_path_factory.mktemp("reader-runs")
    return artifacts.save_run(result, mnist_files, x_test, y_test, root=root)


READER_TEST_NUMBERS = 12_000
READER_TEST_EPOCHS = 3


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *arguments) -> None:
        pass


@contextlib.contextmanager
def static_host(folder: Path, handler: type = QuietHandler):
    """Any static web server: Python's own, serving ``folder``; yields its URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, log: Path, *options: str):
    """A real `digitlab serve` of ``run`` on 127.0.0.1, as a user starts it, its output in
    ``log``; yields (url, port) once /api/health answers."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    digitlab = Path(sys.executable).with_name("digitlab")
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(digitlab), "serve", "--run", str(run), "--port", str(port), *options],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DIGITLAB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"digitlab serve did not start: {log.read_text()[-2000:]}")
        yield url, port
    finally:
        server.terminate()
        server.wait(timeout=10)


CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's hosts, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_executable() -> str:
    import shutil

    executable = shutil.which("chromium") or CHROMIUM
    if not Path(executable).exists():
        pytest.fail(
            "chromium is not installed: run `make system-packages` (apt-get install chromium)"
        )
    return executable


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright (its own browser download cannot work)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


STROKES = {
    # Digits as pen strokes in a 0-1 box (x right, y down), drawn with the mouse.
    "1": [[(0.52, 0.12), (0.50, 0.88)]],
    "7": [[(0.22, 0.15), (0.78, 0.15), (0.45, 0.88)]],
    "0": [[(0.5 + 0.24 * np.sin(t), 0.5 - 0.36 * np.cos(t)) for t in np.linspace(0, 6.4, 40)]],
}


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for start, end in zip(points, points[1:], strict=False):
            for step in np.linspace(0, 1, 6)[1:]:  # several moves per segment, like a hand
                page.mouse.move(
                    start[0] + step * (end[0] - start[0]), start[1] + step * (end[1] - start[1])
                )
        page.mouse.up()
