"""digitlab export: ONNX checked in onnxruntime against the run's own Keras model, the Keras
file, and the offline page in Chromium with the network blocked."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from conftest import STROKES, draw, static_host
from digitlab import artifacts, export, preprocess, runtime, synthetic
from digitlab.cli import cli
from digitlab.config import STRIP_WIDTH
from digitlab.models import READER_STEP_PIXELS
from digitlab.predict import Predictor


@pytest.fixture(scope="module")
def ready_cnn() -> Path:
    run = artifacts.ready_run("digit")
    assert run is not None, "the ready-made CNN is missing from src/digitlab/ready/cnn"
    return run


@pytest.fixture(scope="module")
def ready_reader() -> Path:
    run = artifacts.ready_run("number")
    assert run is not None, "the ready-made number reader is missing from src/digitlab/ready"
    return run


def onnx_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [output] = session.run(None, {export.INPUT_NAME: inputs.astype(np.float32)})
    return output


def keras_outputs(run: Path, inputs: np.ndarray) -> np.ndarray:
    model = artifacts.load_run(run).model
    return np.asarray(model.predict(inputs, batch_size=500, verbose=0))


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_onnx_matches_the_run_on_the_10000_test_digits(which, mnist_run, ready_cnn, mnist_arrays,
                                                         tmp_path):  # fmt: skip
    run = {"mlp": mnist_run, "cnn": ready_cnn}[which]
    _, (x_test, _) = mnist_arrays
    shape = tuple(artifacts.read_manifest(run)["input_shape"])
    inputs = x_test.reshape(len(x_test), *shape).astype(np.float32) / 255
    path = export.export_onnx(run, tmp_path / "model.onnx")

    exported, own = onnx_outputs(path, inputs), keras_outputs(run, inputs)
    assert exported.shape == own.shape == (10_000, 10 if which == "mlp" else 11)
    assert np.array_equal(exported.argmax(axis=1), own.argmax(axis=1))
    assert np.abs(exported - own).max() < 1e-5
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert metadata["model"] == which and json.loads(metadata["label_names"])[7] == "7"


def test_onnx_of_the_number_reader_reads_the_same_numbers(ready_reader, mnist_arrays, tmp_path):
    _, (x_test, y_test) = mnist_arrays
    numbers = synthetic.make_numbers(x_test, y_test, 200, seed=5, max_length=8, workers=1)
    inputs = numbers.strips[..., None].astype(np.float32) / 255
    path = export.export_onnx(ready_reader, tmp_path / "reader.onnx")

    exported, own = onnx_outputs(path, inputs), keras_outputs(ready_reader, inputs)
    steps = STRIP_WIDTH // READER_STEP_PIXELS
    assert exported.shape == own.shape == (200, steps, 33)  # three members, 11 classes each
    assert np.abs(exported - own).max() < 1e-5


def test_onnx_batch_size_is_free(ready_cnn, tmp_path):
    path = export.export_onnx(ready_cnn, tmp_path / "model.onnx")
    for count in (1, 3):
        assert onnx_outputs(path, np.zeros((count, 28, 28, 1))).shape == (count, 11)


def test_export_command(ready_cnn, mnist_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(tmp_path / "digits.onnx")])
    assert result.exit_code == 0, result.output
    assert "ready-made cnn shipped with digitlab" in result.output  # no runs: the shipped one
    result = runner.invoke(
        cli, ["export", "--format", "keras", "--run", str(mnist_run), str(tmp_path / "m.keras")]
    )
    assert result.exit_code == 0, result.output
    import keras

    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert reloaded.name == "mlp"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--format", "onnx", "model.keras"], "one file named *.onnx"),
        (["--format", "keras", "model.onnx"], "one file named *.keras"),
        (["--format", "savedmodel", "out"], "Invalid value for '--format'"),
        (["--format", "web", "taken"], "nothing is overwritten"),
        (["--format", "web", "--force", "taken"], "nothing is overwritten"),  # not an export
        (["--format", "onnx", "existing.onnx"], "or --force to replace it"),
        (["--run", "nowhere", "x.onnx"], "nowhere is not a run folder"),
    ],
)
def test_export_refuses_bad_requests_in_one_line(arguments, message, tmp_path, ready_cnn):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    (tmp_path / "existing.onnx").write_text("mine")
    with contextlib.chdir(tmp_path):
        result = CliRunner().invoke(cli, ["export", *arguments])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"  # nothing overwritten
    assert (tmp_path / "existing.onnx").read_text() == "mine"


def test_force_replaces_an_earlier_export(ready_cnn, tmp_path):
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(
            cli, ["export", "--format", "web", "--force", str(tmp_path / "page")]
        )
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["export", "--force", str(tmp_path / "digits.onnx")])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx", "page"]  # no leftovers
    assert (tmp_path / "page" / "model.js").is_file()


def test_web_export_refuses_a_number_reader(ready_reader, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", "--format", "web", "--run", str(ready_reader), str(tmp_path / "page")]
    )
    assert result.exit_code == 1 and "is a number reader" in result.output
    assert not (tmp_path / "page").exists()


# ------------------------------------------------------------------- the page, offline


def offline_page(browser, url: str, host: str):
    """A page at ``url`` in a context where every request but to ``host`` (a URL prefix: the
    static host, or file://) fails as with no network."""
    context = browser.new_context(viewport={"width": 900, "height": 800})
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(host)
            else route.abort("internetdisconnected")
        ),
    )
    page = context.new_page()
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(url)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('browser')")
    return page, failed


@pytest.mark.slow
def test_offline_page_reads_drawn_digits_like_python(ready_cnn, browser, mnist_arrays, tmp_path):
    folder = export.export_web(ready_cnn, tmp_path / "page")
    _, (x_test, y_test) = mnist_arrays
    shots = Path(os.environ.get("DIGITLAB_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    numpy_model = runtime.NumpyModel.load(ready_cnn / runtime.INFERENCE_FILE, (28, 28, 1))
    with static_host(folder) as host:
        for name, url, allowed in (
            ("file", (folder / "index.html").as_uri(), folder.as_uri()),
            ("http", f"{host}/index.html", host),
        ):
            page, failed = offline_page(browser, url, allowed)
            for digit, strokes in STROKES.items():
                page.keyboard.press("Escape")
                draw(page, strokes)
                page.wait_for_function(
                    f"document.getElementById('label').textContent === '{digit}'", timeout=10_000
                )
                top = page.locator("#bars li.top")
                shown = float(top.get_attribute("aria-label").split(": ")[1].rstrip("%")) / 100
                filled = top.locator(".fill").bounding_box()["width"]
                assert filled / top.locator(".bar").bounding_box()["width"] == pytest.approx(
                    shown, abs=0.02
                )
                page.wait_for_function("!document.getElementById('why-figure').hidden")
                assert page.locator("#why-map").evaluate("i => i.complete && i.naturalWidth === 28")
                page.screenshot(path=str(shots / f"offline-{name}-{digit}.png"))

            # The model in the browser against the Python runtime, on the same 28x28 inputs.
            digits = x_test[:50]
            in_browser = np.array(
                page.evaluate(
                    "digits => { const predict = digitlabForward.load(DIGITLAB_MODEL);"
                    " return digits.map((d) => predict(d.map((v) => v / 255))); }",
                    digits.reshape(50, -1).tolist(),
                )
            )
            in_python = numpy_model(digits[..., None].astype(np.float32) / 255)
            assert np.abs(in_browser - in_python).max() < 1e-4
            assert np.array_equal(in_browser[:, :10].argmax(axis=1), y_test[:50])
            # The map of why, in the browser against digitlab.explain's, for the test digit the
            # CNN is least sure of (a sure one's map can be all but flat: no patch matters).
            unsure = int(np.argmin(in_python[:, :10].max(axis=1)))
            predictor = Predictor.from_run(ready_cnn)
            in_python = predictor.explain(x_test[unsure])
            in_browser = np.array(
                page.evaluate(
                    "([image, label]) => { const predict = digitlabForward.load(DIGITLAB_MODEL);"
                    " const probabilities = (p) => { const o = predict(p).slice(0, 10);"
                    " const t = o.reduce((a, b) => a + b, 0); return o.map((v) => v / t); };"
                    " return digitlabExplain.occlusionMap(image, probabilities, label); }",
                    [x_test[unsure].ravel().tolist(), int(y_test[unsure])],
                )
            ).reshape(28, 28)
            assert in_python.max() > 0.01 and np.abs(in_browser - in_python).max() < 1e-4
            # "Not a digit" in the browser against Python's: the score averaged over the same
            # shifts, the same threshold, on test digits and made non-digits
            samples = np.concatenate([x_test[:12], synthetic.prepared_non_digits(12, seed=77)])
            in_browser = page.evaluate(
                "digits => digits.map((d) => { const p = Float32Array.from(d, (v) => v / 255);"
                " const a = localAnswer(localModel(p), null, p);"
                " return [a.digit_score, a.is_digit]; })",
                samples.reshape(len(samples), -1).tolist(),
            )
            _, in_python = predictor.scored_digits(samples)
            assert predictor.score_shifts  # the shipped rule is averaged over shifts
            scores = np.array([score for score, _ in in_browser])
            assert np.abs(scores - in_python).max() < 1e-4
            judged = [is_digit for _, is_digit in in_browser]
            assert judged == list(in_python >= predictor.rejection_threshold)
            assert any(judged) and not all(judged)
            assert failed == []  # it asked the network for nothing
            page.context.close()


@pytest.mark.slow
def test_offline_page_prepares_a_drawing_like_python(ready_cnn, browser, tmp_path):
    """The page's own preprocessing of a drawn digit against digitlab's, on the same canvas."""
    folder = export.export_web(ready_cnn, tmp_path / "page")
    page, _ = offline_page(browser, (folder / "index.html").as_uri(), folder.as_uri())
    draw(page, STROKES["7"])
    page.wait_for_function("document.getElementById('label').textContent === '7'")
    canvas_png = page.locator("#pad").evaluate("pad => pad.toDataURL('image/png').split(',')[1]")
    in_browser = np.array(
        page.evaluate(
            "() => Array.from(digitlabPreprocess.prepare(document.getElementById('pad')"
            ".getContext('2d').getImageData(0, 0, 280, 280)).image)"
        ),
        np.uint8,
    ).reshape(28, 28)
    import base64

    in_python = preprocess.prepare_image(base64.b64decode(canvas_png))
    assert np.abs(in_browser.astype(int) - in_python).mean() < 12  # of 255: resampling differs
    predictor = Predictor.from_run(ready_cnn)
    assert predictor.predict([in_browser])[0].label == predictor.predict([in_python])[0].label
    page.context.close()


def test_web_export_is_complete_and_atomic(ready_cnn, tmp_path):
    folder = export.export_web(ready_cnn, tmp_path / "page")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.html", "model.js", *export.OFFLINE_FILES]
    )
    html = (folder / "index.html").read_text()
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from anywhere
    model = (folder / "model.js").read_text()
    description = json.loads(model.split("=", 1)[1].strip().rstrip(";"))
    assert description["model"] == "cnn" and len(description["layers"]) > 5
    leftovers = [p for p in tmp_path.iterdir() if p.name != "page"]
    assert leftovers == []
