"""Exported models (issue #13): file sizes, single-image latency in onnxruntime beside
digitlab's own NumPy runtime, and the offline page in Chromium: load time and time per
prediction with digitlab's JavaScript forward pass, and with onnxruntime-web (vendored from the
npm registry, WebAssembly, over HTTP) for comparison.

    python benchmarks/exports.py [--run RUN]   (default: the ready-made CNN)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import write_result
from digitlab import artifacts, datasets, export
from digitlab.predict import Predictor

ORT_WEB = "onnxruntime-web@1.30.0"
# the WebAssembly-only build: what a CPU model needs, and the smallest
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
REPEATS = 200


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(function, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``function()``, after a warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def python_latency(run: Path, onnx_path: Path, digit: np.ndarray) -> dict:
    import onnxruntime

    predictor = Predictor.from_run(run)
    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"]
    )
    single = digit[None, ..., None].astype(np.float32) / 255
    return {
        "digitlab_numpy_ms": round(timed(lambda: predictor.predict_digits(digit[None])), 4),
        "onnxruntime_ms": round(timed(lambda: session.run(None, {"input": single})), 4),
    }


def ort_web_files(folder: Path) -> bool:
    """onnxruntime-web's script and WebAssembly, from the npm registry, into ``folder``."""
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            ["npm", "pack", ORT_WEB, "--silent"], cwd=scratch, capture_output=True, text=True
        )
        if packed.returncode != 0:
            print(f"npm pack {ORT_WEB} failed: {packed.stderr.strip()[:200]}")
            return False
        with tarfile.open(Path(scratch) / packed.stdout.strip().splitlines()[-1]) as archive:
            for name in ORT_FILES:
                source = archive.extractfile(f"package/dist/{name}")
                (folder / name).write_bytes(source.read())
    return True


ORT_PAGE = """<!DOCTYPE html><meta charset="utf-8"><script src="ort.wasm.min.js"></script><script>
ort.env.wasm.numThreads = 1;
window.ready = (async () => {
  const started = performance.now();
  window.session = await ort.InferenceSession.create("model.onnx");
  return performance.now() - started;
})();
window.timeRuns = async (pixels, repeats) => {
  const input = new ort.Tensor("float32", Float32Array.from(pixels), [1, 28, 28, 1]);
  await session.run({input});
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    await session.run({input});
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[Math.floor(repeats / 2)];
};
</script>"""

OWN_TIMING = """([pixels, repeats]) => {
  const predict = digitlabForward.load(DIGITLAB_MODEL);
  predict(pixels);
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    predict(pixels);
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[Math.floor(repeats / 2)];
}"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *arguments) -> None:
        pass


@contextlib.contextmanager
def static_host(folder: Path):
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def browser_figures(page_folder: Path, ort_folder: Path | None, digit: np.ndarray) -> dict:
    from playwright.sync_api import sync_playwright

    pixels = (digit.ravel() / 255).tolist()
    figures: dict = {}
    with sync_playwright() as playwright, static_host(page_folder.parent) as host:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS
        )
        for where, url in (
            ("file", (page_folder / "index.html").as_uri()),
            ("http", f"{host}/{page_folder.name}/index.html"),
        ):
            loads = []
            for _ in range(5):
                page = browser.new_page()
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_function(
                    "document.getElementById('model-info').textContent.includes('browser')"
                )
                loads.append((time.perf_counter() - started) * 1000)
                page.close()
            page = browser.new_page()
            page.goto(url)
            figures[f"digitlab_js_{where}"] = {
                "load_ms": round(statistics.median(loads), 1),
                "prediction_ms": round(page.evaluate(OWN_TIMING, [pixels, REPEATS]), 3),
            }
            page.close()
        if ort_folder is not None:
            for where, url in (
                ("http", f"{host}/{ort_folder.name}/index.html"),
                ("file", (ort_folder / "index.html").as_uri()),
            ):
                page = browser.new_page()
                started = time.perf_counter()
                page.goto(url)
                try:
                    created = page.evaluate("window.ready")
                except Exception as error:  # the page's own error: what a user would meet
                    figures[f"onnxruntime_web_{where}"] = {"works": False,
                                                           "error": str(error)[:200]}  # fmt: skip
                    page.close()
                    continue
                figures[f"onnxruntime_web_{where}"] = {
                    "works": True,
                    "load_ms": round((time.perf_counter() - started) * 1000, 1),
                    "session_create_ms": round(created, 1),
                    "prediction_ms": round(page.evaluate(
                        "([p, r]) => window.timeRuns(p, r)", [pixels, REPEATS]), 3),
                }  # fmt: skip
                page.close()
        browser.close()
    return figures


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    chosen = parser.parse_args().run
    run = artifacts.resolve_run(chosen) if chosen else artifacts.ready_run("digit")
    _, (x_test, _) = datasets.load_data("mnist", report=lambda line: None)
    digit = x_test[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        onnx_path = export.export_onnx(run, scratch / "model.onnx")
        keras_path = export.export_keras(run, scratch / "model.keras")
        page = export.export_web(run, scratch / "page")
        ort_folder = scratch / "ort"
        ort_folder.mkdir()
        have_ort = ort_web_files(ort_folder)
        if have_ort:
            shutil.copyfile(onnx_path, ort_folder / "model.onnx")
            (ort_folder / "index.html").write_text(ORT_PAGE)
        result = {
            "cpu": cpu(),
            "run": str(run),
            "model": artifacts.read_manifest(run)["model"],
            "sizes_bytes": {
                "onnx": onnx_path.stat().st_size,
                "keras": keras_path.stat().st_size,
                "inference_npz": (run / "inference.npz").stat().st_size,
                "web_folder": folder_bytes(page),
                "web_model_js": (page / "model.js").stat().st_size,
                "onnxruntime_web_files": folder_bytes(ort_folder) - onnx_path.stat().st_size
                if have_ort
                else None,
            },
            "python_single_image": python_latency(run, onnx_path, digit),
            "chromium": browser_figures(page, ort_folder if have_ort else None, digit),
        }
    write_result("exports", result)


if __name__ == "__main__":
    main()
