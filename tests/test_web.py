"""The web service: every route and error code in-process, then the page in a real browser."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import STROKES, draw, serving
from digitlab.config import ServeConfig
from digitlab.predict import Predictor
from digitlab.schemas import DigitAnswer, NumberAnswer
from digitlab.web.app import LIMITS, Guard, create_app


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mnist_test(mnist_arrays):
    _, (x_test, y_test) = mnist_arrays
    return x_test, y_test


@pytest.fixture(scope="module")
def client(mnist_run):
    with TestClient(create_app(Predictor.from_run(mnist_run))) as test_client:
        yield test_client


def paper(digit: np.ndarray) -> bytes:
    """An MNIST digit as dark ink on a light 120 px canvas, as a PNG."""
    canvas = np.full((120, 120), 235, np.uint8)
    big = np.array(Image.fromarray(digit).resize((84, 84)))
    canvas[18:102, 18:102] = np.minimum(canvas[18:102, 18:102], 255 - big)
    return png(canvas)


# ------------------------------------------------------------------------------- the routes


def test_the_page_and_its_files_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.text) > 500
        assert "https://" not in response.text and "http://" not in response.text  # no CDN
    assert "https://" not in page.text


def test_health_model_and_docs(client, mnist_run):
    assert client.get("/api/health").json() == {"status": "ok", "model": "mlp"}
    model = client.get("/api/model").json()
    manifest = json.loads((mnist_run / "metrics.json").read_text())
    assert model["test_accuracy"] == manifest["metrics"]["test_accuracy"]
    assert model["data_sha256"] == manifest["data_sha256"] and model["dataset"] == "mnist"
    assert {"created", "model", "label_names", "versions"} <= set(model)
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/predict", "/api/predict/batch", "/api/health", "/api/model"} <= set(paths)


def test_predict_a_raw_image_body(client, mnist_test):
    x_test, y_test = mnist_test
    answer = client.post(
        "/api/predict", content=paper(x_test[0]), headers={"Content-Type": "image/png"}
    ).json()
    assert answer["label"] == y_test[0] == 7
    assert len(answer["probabilities"]) == 10 and answer["confidence"] > 0.5
    seen = Image.open(io.BytesIO(base64.b64decode(answer["input_png"])))
    assert seen.size == (28, 28)
    DigitAnswer.model_validate(answer)


def test_predict_a_multipart_file_and_json_pixels(client, mnist_test):
    x_test, y_test = mnist_test
    form = client.post("/api/predict", files={"file": ("two.png", paper(x_test[1]), "image/png")})
    assert form.status_code == 200 and form.json()["label"] == y_test[1]
    pixels = client.post("/api/predict", json={"pixels": x_test[2].tolist()})
    assert pixels.status_code == 200 and pixels.json()["label"] == y_test[2]


def test_predict_a_number(client, mnist_test):
    x_test, y_test = mnist_test
    indices = [int(np.flatnonzero(y_test == digit)[0]) for digit in (4, 0, 3)]
    strip = np.hstack([np.pad(x_test[i], ((4, 4), (6, 6))) for i in indices])
    response = client.post(
        "/api/predict?number=true", content=png(255 - strip), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["text"] == "403" and len(answer["digits"]) == 3
    # The same schema as the CLI's --number --json (test_predict), plus what the page shows.
    checked = NumberAnswer.model_validate(answer)
    assert checked.input_png and all(digit.input_png for digit in checked.digits)


def test_batch_answers_each_image_and_fails_only_the_bad_one(client, mnist_test):
    x_test, y_test = mnist_test
    files = [("files", (f"{i}.png", paper(x_test[i]), "image/png")) for i in range(3)]
    files.append(("files", ("bad.png", b"not an image", "image/png")))
    results = client.post("/api/predict/batch", files=files).json()["results"]
    assert [r.get("label") for r in results[:3]] == y_test[:3].tolist()
    assert results[3]["name"] == "bad.png" and set(results[3]) == {"name", "error"}
    assert results[3]["error"].startswith("not an image file digitlab can read")
    as_json = client.post(
        "/api/predict/batch", json={"images": [{"pixels": x_test[i].tolist()} for i in range(2)]}
    )
    assert [r["label"] for r in as_json.json()["results"]] == y_test[:2].tolist()
    too_many = client.post(
        "/api/predict/batch", json={"images": [x_test[0].tolist()] * (LIMITS.max_batch + 1)}
    )
    assert too_many.status_code == 413


# ---------------------------------------------------------------------------- error codes

NOISE_PNG = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"hello", "text/plain", 415, "unsupported content type text/plain"),
        (b"", "", 415, "unsupported content type (none)"),
        (b"not an image", "image/png", 422, "not an image file"),
        (b"", "image/png", 422, "the file is empty"),
        (png(np.full((50, 50), 255, np.uint8)), "image/png", 422, "no digit found"),
        (NOISE_PNG[: len(NOISE_PNG) // 2], "image/png", 422, "truncated or corrupt"),
        (b"{not json", "application/json", 422, "not valid JSON"),
        (b'{"pixels": [[1, 2], [3, 4]]}', "application/json", 422, "28x28"),
        (b'{"pixels": "abc"}', "application/json", 422, "28 rows of 28 numbers"),
        (b"[1, 2]", "application/json", 422, "expected a JSON object"),
        (json.dumps({"pixels": [[300] * 28] * 28}).encode(), "application/json", 422, "0 to 255"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_clear_message(client, body, content_type, status, message):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/predict", content=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_an_oversize_body_is_refused_before_it_is_read(mnist_run):
    app = create_app(Predictor.from_run(mnist_run), ServeConfig(max_body_bytes=1000))
    with TestClient(app) as small:
        declared = small.post(
            "/api/predict", content=b"x" * 5000, headers={"Content-Type": "image/png"}
        )
        assert declared.status_code == 413 and "over the limit" in declared.json()["error"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 500

        streamed = small.post(
            "/api/predict", content=chunks(), headers={"Content-Type": "image/png"}
        )
        assert streamed.status_code == 413


def test_too_many_at_once_get_a_fast_503_and_health_still_answers():
    release = asyncio.Event()

    async def slow_app(scope, receive, send):  # stands in for a prediction that takes a while
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    guard = Guard(slow_app, ServeConfig(max_body_bytes=1000, max_concurrent=2))

    async def scenario():
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            busy = [asyncio.create_task(http.post("/api/predict", content=b"x")) for _ in range(2)]
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            refused = await http.post("/api/predict", content=b"x")
            refused_seconds = time.perf_counter() - started
            assert guard.in_flight == 2
            release.set()
            done = await asyncio.gather(*busy)
            return refused, refused_seconds, done

    # A thread of its own: Playwright's sync API may already run an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        refused, seconds, done = thread.submit(asyncio.run, scenario()).result()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "too many requests" in refused.json()["error"]
    assert seconds < 0.5
    assert [r.status_code for r in done] == [200, 200]
    assert guard.in_flight == 0


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="digitlab.web"):
        client.get("/api/health")
        client.post("/api/predict", content=b"x", headers={"Content-Type": "text/plain"})
    lines = [record.getMessage() for record in caplog.records if record.name == "digitlab.web"]
    assert len(lines) == 2
    assert lines[0].startswith("GET /api/health 200 ") and lines[1].startswith(
        "POST /api/predict 415"
    )


# ------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def served(mnist_run, tmp_path_factory):
    """A real `digitlab serve` on 127.0.0.1, as a user starts it."""
    with serving(mnist_run, tmp_path_factory.mktemp("serve") / "serve.log") as (url, _):
        yield url


@pytest.mark.slow
def test_draw_digits_and_upload_a_photo_in_chromium(served, browser, mnist_test, tmp_path):
    x_test, y_test = mnist_test
    page = browser.new_page(viewport={"width": 900, "height": 800})
    page.goto(served)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('mnist')")
    shots = Path(os.environ.get("DIGITLAB_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    for digit, strokes in STROKES.items():
        page.keyboard.press("Escape")  # clear, from the keyboard
        page.wait_for_function("document.getElementById('label').textContent === '\u2013'")
        draw(page, strokes)
        page.wait_for_function(
            f"document.getElementById('label').textContent === '{digit}'", timeout=10_000
        )
        assert page.locator("#bars li").count() == 10
        assert page.locator("#seen").evaluate("img => img.complete && img.naturalWidth === 28")
        # What a person sees: the top bar filled in proportion to its probability.
        top = page.locator("#bars li.top")
        shown = float(top.get_attribute("aria-label").split(": ")[1].rstrip("%")) / 100
        track = top.locator(".bar").bounding_box()
        filled = top.locator(".fill").bounding_box()
        assert track["width"] > 50 and filled["height"] > 5
        assert filled["width"] / track["width"] == pytest.approx(shown, abs=0.02)
        # Why: the input with the pixels the answer rests on laid over it, and a caption.
        page.wait_for_function("!document.getElementById('why-figure').hidden")
        assert page.locator("#why-map").evaluate("img => img.complete && img.naturalWidth === 28")
        overlay, under = (page.locator(f"#why-{n}").bounding_box() for n in ("map", "digit"))
        assert overlay == under and overlay["width"] >= 100  # exactly over the digit, visible
        assert page.locator("#why-caption").text_content().startswith(f"Why {digit}?")
        page.screenshot(path=str(shots / f"drawn-{digit}.png"))

    # An MNIST test digit saved as a PNG as it is, then the same on a sheet of paper.
    for name, data, index in (("mnist.png", png(x_test[1]), 1), ("photo.png", paper(x_test[0]), 0)):
        (tmp_path / name).write_bytes(data)
        page.locator("#file").set_input_files(str(tmp_path / name))
        page.wait_for_function(
            f"document.getElementById('label').textContent === '{y_test[index]}'"
        )
        blank = page.locator("#pad").evaluate(
            "pad => pad.getContext('2d').getImageData(0, 0, pad.width, pad.height)"
            ".data.every(value => value > 200)"
        )
        assert blank  # the drawing the upload replaced is not left on the pad
        page.screenshot(path=str(shots / f"uploaded-{name}"))

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    page.locator("#file").set_input_files(str(text_file))
    alert = page.locator("#error")
    alert.wait_for(state="visible")
    assert "not an image" in alert.text_content().lower()

    phone = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)
    phone.goto(served)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling on a phone
    phone.screenshot(path=str(shots / "phone.png"), full_page=True)
    phone.close()
    page.close()


def test_serve_on_a_busy_port_is_one_clear_line(mnist_run):
    from click.testing import CliRunner

    from digitlab.cli import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--run", str(mnist_run), "--port", str(port)])
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"Error: cannot serve on 127.0.0.1:{port}: Address already in use"
    )


def test_uploads_still_arriving_are_bounded_and_hold_no_prediction_slot():
    """A request that is still sending its body counts against max_receiving, not against
    max_concurrent: a slow upload cannot take a prediction slot."""
    predicted = []

    async def app(scope, receive, send):
        predicted.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    guard = Guard(app, ServeConfig(max_receiving=1, max_concurrent=1, body_timeout_seconds=0.5))
    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": []}

    async def scenario():
        never = asyncio.Event()

        async def slow_receive():  # a body that never comes
            await never.wait()

        async def fast_receive():
            return {"type": "http.request", "body": b"x", "more_body": False}

        sent: dict[str, list] = {"slow": [], "second": []}

        async def collect(name):
            async def send(message):
                sent[name].append(message)

            return send

        slow = asyncio.create_task(guard(scope, slow_receive, await collect("slow")))
        await asyncio.sleep(0.05)
        assert guard.receiving == 1 and guard.in_flight == 0  # no slot held while sending
        await guard(scope, fast_receive, await collect("second"))
        await slow
        return sent

    with ThreadPoolExecutor(1) as thread:
        sent = thread.submit(asyncio.run, scenario()).result()
    assert sent["second"][0]["status"] == 503  # the one upload allowed was still arriving
    assert b"too many uploads" in sent["second"][1]["body"]
    assert sent["slow"][0]["status"] == 408  # and it timed out
    assert predicted == [] and guard.receiving == 0 and guard.in_flight == 0


NUMBER_STROKES = [  # "17" on the wide number pad, in its 0-1 box
    [(0.30, 0.15), (0.29, 0.85)],
    [(0.50, 0.18), (0.72, 0.18), (0.58, 0.85)],
]


@pytest.mark.slow
def test_write_a_number_in_chromium(mnist_run, reader_run, browser, tmp_path):
    """The page's number mode with a number reader: a wide pad, the number read whole, each
    digit with its confidence, and the strip the reader saw, as a person sees them."""
    log = tmp_path / "serve.log"
    with serving(mnist_run, log, "--reader", str(reader_run)) as (url, _):
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url)
        page.wait_for_function(
            "document.getElementById('model-info').textContent.includes('number reader')"
        )
        page.locator("#number").check()
        pad = page.locator("#pad").bounding_box()
        assert pad["width"] / pad["height"] == pytest.approx(560 / 200, rel=0.05)
        draw(page, NUMBER_STROKES)
        page.wait_for_function(
            "document.getElementById('label').textContent === '17'", timeout=10_000
        )
        said = page.locator("#reader").text_content()
        assert "number reader" in said and "each lone digit also read by the digit model" in said
        assert page.locator("#number-digits li").count() == 2
        seen = page.locator("#seen")
        assert seen.evaluate("img => img.complete && img.naturalWidth === 224")
        box = seen.bounding_box()  # shown at the strip's own shape (inside a 1 px border)
        assert (box["width"] - 2) / (box["height"] - 2) == pytest.approx(224 / 28, rel=0.04)
        shots = Path(os.environ.get("DIGITLAB_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "number-17.png"))
        page.locator("#number").uncheck()  # back to one digit: a square pad, cleared
        pad = page.locator("#pad").bounding_box()
        assert pad["width"] == pytest.approx(pad["height"], rel=0.02)
        assert page.locator("#label").text_content() == "\u2013"
    started = log.read_text()
    assert f"numbers read by the reader of {reader_run}" in started
    assert f"each lone digit also read by the mlp of {mnist_run}" in started  # the --run given


def test_explain_adds_a_map_of_what_the_answer_rests_on(client, mnist_test):
    x_test, _ = mnist_test
    png_type = {"Content-Type": "image/png"}
    answer = client.post(
        "/api/predict?explain=true", content=png(x_test[0]), headers=png_type
    ).json()
    DigitAnswer.model_validate(answer)
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["explanation_png"])))
    assert overlay.size == (28, 28) and overlay.mode == "RGBA"
    strength = np.asarray(overlay)[..., 3]
    ink = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["input_png"])))) > 0
    assert strength.max() > 200 and not strength[~ink].any()  # on the digit's ink only
    plain = client.post("/api/predict", content=png(x_test[0]), headers=png_type).json()
    assert "explanation_png" not in plain
    number = client.post(
        "/api/predict?number=true&explain=true", content=paper(x_test[0]), headers=png_type
    )
    assert "explanation_png" not in number.json()  # a number's digits are not explained


# ---------------------------------------------------------------------------- the camera


def y4m_clip(path: Path, digit: np.ndarray, frames: int = 20) -> Path:
    """A 640x480 video of ``digit`` written with a dark pen on grey paper, held by a slightly
    shaking hand, as Chromium's fake camera plays it (YUV4MPEG2, 4:2:0)."""
    rng = np.random.default_rng(3)
    ink = np.array(Image.fromarray(digit).resize((200, 200), Image.Resampling.BILINEAR)) / 255
    width, height = 640, 480
    with open(path, "wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            luma = np.full((height, width), 170.0) + rng.normal(0, 4, (height, width))
            luma += np.linspace(-15, 15, width)[None, :]  # light from one side
            top, left = 140 + rng.integers(-6, 7), 220 + rng.integers(-6, 7)
            luma[top : top + 200, left : left + 200] *= 1 - 0.8 * ink
            chroma = np.full((height // 2, width // 2), 128, np.uint8)
            clip.write(b"FRAME\n" + np.clip(luma, 0, 255).astype(np.uint8).tobytes())
            clip.write(chroma.tobytes() + chroma.tobytes())
    return path


@pytest.mark.slow
def test_the_camera_reads_a_written_digit_live(browser, mnist_test, tmp_path):
    from conftest import CHROMIUM_ARGS, chromium_executable
    from digitlab import artifacts

    x_test, y_test = mnist_test
    clip = y4m_clip(tmp_path / "seven.y4m", x_test[0])  # a 7
    shots = Path(os.environ.get("DIGITLAB_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    fake_camera = [
        "--use-fake-ui-for-media-stream",  # allow the camera without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]
    with serving(artifacts.ready_run("digit"), tmp_path / "serve.log") as (url, _):
        # a Chromium of its own, with the fake camera (Playwright's runs in this thread)
        with_camera = browser.browser_type.launch(
            executable_path=chromium_executable(),
            headless=True,
            args=[*CHROMIUM_ARGS, *fake_camera],
        )
        page = with_camera.new_page(viewport={"width": 1000, "height": 900})
        in_flight, most, sent = [0], [0], []

        def started(request):
            if "/api/predict" in request.url:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
                sent.append(time.monotonic())

        def ended(request):
            if "/api/predict" in request.url:
                in_flight[0] -= 1

        page.on("request", started)
        page.on("requestfinished", ended)
        page.on("requestfailed", ended)
        page.goto(url)
        page.click("#camera")
        page.wait_for_function(
            f"document.getElementById('label').textContent === '{y_test[0]}'", timeout=15_000
        )
        page.wait_for_timeout(2_000)  # it goes on reading, a few times a second
        video = page.locator("#video").bounding_box()
        guide = page.locator("#guide").bounding_box()
        assert video["width"] > 200 and guide["width"] > 50
        assert video["x"] < guide["x"] and guide["x"] + guide["width"] < video["x"] + video["width"]
        page.screenshot(path=str(shots / "camera.png"))
        recent = [t for t in sent if t > sent[-1] - 2.0]
        assert 3 <= len(recent) <= 8  # about every 300 ms
        assert most[0] == 1  # never a second request while one is being answered
        page.click("#camera")  # stop
        assert page.locator("#camera-view").is_hidden()
        count = len(sent)
        page.wait_for_timeout(1_000)
        assert len(sent) == count  # stopped means no more readings
        with_camera.close()


DOODLE_STROKES = [  # a spiral and a zigzag on the wide number pad, in its 0-1 box
    [(0.2 + 0.12 * t / 12 * np.cos(t), 0.5 + 0.33 * t / 12 * np.sin(t))
     for t in np.linspace(0.5, 12, 40)],
    [(x, 0.2 if index % 2 else 0.8) for index, x in enumerate(np.linspace(0.45, 0.9, 7))],
]  # fmt: skip


@pytest.mark.slow
def test_a_doodle_in_number_mode_is_not_a_number_in_chromium(browser, tmp_path):
    """The page with the ready-made models: a doodle on the number pad is answered "not a
    number", marked as rejected, with what the reader read beside it."""
    from digitlab import artifacts

    ready = artifacts.ready_run("digit")
    reader = artifacts.ready_run("number")
    with serving(ready, tmp_path / "serve.log", "--reader", str(reader)) as (url, _):
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url)
        page.wait_for_function(
            "document.getElementById('model-info').textContent.includes('number reader')"
        )
        page.locator("#number").check()
        draw(page, DOODLE_STROKES)  # read as it is drawn: wait for the answer to all of it,
        # the one whose strip (what the reader saw, left-aligned) reaches on to the zigzag
        # (the spiral alone is about 20 of its columns wide, the whole doodle about 70)
        page.wait_for_function(
            """() => {
            const img = document.getElementById('seen');
            if (img.hidden || !img.complete || img.naturalWidth !== 224) return false;
            const canvas = document.createElement('canvas');
            canvas.width = 224; canvas.height = 28;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const beyond = context.getImageData(50, 0, 174, 28).data;
            return beyond.some((value, index) => index % 4 === 0 && value > 128);
        }""",
            timeout=10_000,
        )
        assert page.locator("#label").text_content() == "not a number"
        label = page.locator("#label")
        assert "rejected" in (label.get_attribute("class") or "")
        said = page.locator("#confidence").text_content()
        assert said.startswith("(read as ") and said.endswith(")")
        box = label.bounding_box()  # seen: on screen, not empty
        assert box["width"] > 50 and box["height"] > 10
        shots = Path(os.environ.get("DIGITLAB_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "number-doodle.png"))
