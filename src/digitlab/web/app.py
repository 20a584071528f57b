"""``create_app(predictor)``: the draw-a-digit page, the JSON API and a health check.

Bad input never gets a 500: a body over the limit is refused with 413 before it is read, a wrong
content type gets 415, an image that cannot be read or holds no digit 422, and more predictions
at once than ``max_concurrent`` a fast 503 with ``Retry-After``. One log line per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from digitlab import DigitlabError, __version__
from digitlab.config import IMAGE_SIDE, ServeConfig
from digitlab.predict import Predictor
from digitlab.preprocess import ImageError

STATIC = Path(__file__).parent / "static"
LIMITS = ServeConfig()
IMAGE_TYPES = ("image/",)
log = logging.getLogger("digitlab.web")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _json_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware: body limit (413), concurrency limit (503) and the request log line.

    Written against ASGI rather than as a Starlette "BaseHTTPMiddleware" so that it can refuse
    a body before it is read and count bytes as they arrive (a chunked upload has no length).
    """

    def __init__(self, app, max_body_bytes: int, max_concurrent: int):
        self.app, self.max_body_bytes, self.max_concurrent = app, max_body_bytes, max_concurrent
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 0}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, logged_send)
        finally:
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status["code"],
                1e3 * (time.perf_counter() - started),
            )

    async def _guarded(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._refuse(scope, send, 413, self._too_large())
        limited = scope["path"].startswith("/api/predict")
        if limited and self.in_flight >= self.max_concurrent:
            return await self._refuse(
                scope, send, 503, "too many requests at once: retry shortly", {"Retry-After": "1"}
            )
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise ApiError(413, self._too_large())
            return message

        self.in_flight += limited
        try:
            await self.app(scope, counted_receive, send)
        except ApiError as error:  # raised while reading the body: nothing was sent yet
            await self._refuse(scope, send, error.status, error.message)
        finally:
            self.in_flight -= limited

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_body_bytes / 2**20:.1f} MiB"

    @staticmethod
    async def _refuse(scope, send, status: int, message: str, headers: dict | None = None):
        """Answer at once with a JSON error, straight through ASGI: a refusal must be cheap."""
        body = json.dumps({"error": message}).encode()
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


def _pixels(value) -> np.ndarray:
    """JSON ``pixels``: 28 rows of 28 numbers 0-255 -> (28, 28) uint8 (light ink on dark)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ApiError(422, "pixels must be 28 rows of 28 numbers from 0 to 255") from None
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE) or not np.isfinite(array).all():
        raise ApiError(422, f"pixels must be 28x28 numbers, got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ApiError(422, "pixels must be numbers from 0 to 255")
    return array.astype(np.uint8)


async def _images_from(request: Request, many: bool) -> list[tuple[str, object]]:
    """The (name, image) pairs of a request: multipart files, a raw image body, or JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        files = [
            (item.filename or key, await item.read())
            for key, item in form.multi_items()
            if hasattr(item, "read")
        ]
        if not files:
            raise ApiError(422, "the form holds no image file")
        return files if many else files[:1]
    if content_type.startswith(IMAGE_TYPES):
        return [("body", await request.body())]
    if content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            raise ApiError(422, "the body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(422, 'expected a JSON object: {"pixels": [[...28 numbers], ...]}')
        if many and isinstance(payload.get("images"), list):
            return [
                (f"images[{i}]", _pixels(item.get("pixels") if isinstance(item, dict) else item))
                for i, item in enumerate(payload["images"])
            ]
        if "pixels" not in payload:
            raise ApiError(422, 'expected {"pixels": 28x28 numbers 0-255}')
        return [("pixels", _pixels(payload["pixels"]))]
    raise ApiError(
        415,
        f"unsupported content type {content_type or '(none)'}: send an image "
        "(image/png, image/jpeg, ...), a multipart form, or JSON pixels",
    )


def create_app(predictor: Predictor, limits: ServeConfig = LIMITS):
    """The ASGI application: FastAPI routes wrapped in the Guard middleware."""
    app = FastAPI(
        title="digitlab",
        version=__version__,
        description="Read handwritten digits: draw one, upload one, or call the API.",
    )
    names = predictor.label_names
    manifest = predictor.manifest
    # Predictions run one at a time in one worker thread, so that the event loop stays free to
    # read requests, answer /api/health and refuse overload while they wait. (Measured against
    # a worker process: the thread served 340 requests/s on one core, the process 270:
    # pickling and two processes on one core cost more than sharing the GIL.)
    worker = ThreadPoolExecutor(1, thread_name_prefix="digitlab-predict")

    async def in_worker(function, *arguments):
        return await asyncio.get_running_loop().run_in_executor(worker, function, *arguments)

    def read_one(image, number: bool) -> dict:
        [(_, answer)] = predictor.predict_many([("image", image)], number=number)
        if isinstance(answer, ImageError):
            raise ApiError(422, answer.reason)
        return answer.to_dict(with_input=True)

    def read_batch(images: list) -> list[dict]:
        return [
            {"name": name, "error": answer.reason}
            if isinstance(answer, ImageError)
            else {"name": name, **answer.to_dict(with_input=True)}
            for name, answer in predictor.predict_many(images)
        ]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _json_error(error.status, error.message, error.headers)

    @app.exception_handler(DigitlabError)
    async def digitlab_error(request: Request, error: DigitlabError):
        return _json_error(422, error.reason if isinstance(error, ImageError) else str(error))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "model": manifest.get("model", "unknown")}

    @app.get("/api/model")
    async def model() -> dict:
        """The model's manifest: name, data set, test accuracy, when it was made, checksums."""
        return {
            "model": manifest.get("model"),
            "dataset": manifest.get("dataset"),
            "test_accuracy": manifest.get("metrics", {}).get("test_accuracy"),
            "created": manifest.get("created"),
            "label_names": names,
            "data_sha256": manifest.get("data_sha256", {}),
            "versions": manifest.get("versions", {}),
        }

    @app.post("/api/predict")
    async def predict(request: Request, number: bool = False) -> JSONResponse:
        """One image: multipart ``file``, a raw image body, or JSON ``{"pixels": 28x28}``.

        With ``?number=true`` the image holds a written number: answers its ``text`` and each
        digit. Otherwise ``label``, ``confidence``, ``probabilities`` and ``input_png`` (the
        28x28 image the model saw, base64 PNG).
        """
        [(_, image)] = await _images_from(request, many=False)
        # A JSONResponse straight away: FastAPI's encoder would walk the answer again.
        return JSONResponse(await in_worker(read_one, image, number))

    @app.post("/api/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        """Many images: a multipart form with several files, or JSON ``{"images": [...]}``.

        Each result is a prediction or ``{"name", "error"}``; one bad image fails only itself.
        """
        images = await _images_from(request, many=True)
        if len(images) > limits.max_batch:
            raise ApiError(413, f"{len(images)} images in one batch; at most {limits.max_batch}")
        return JSONResponse({"results": await in_worker(read_batch, images)})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, limits.max_body_bytes, limits.max_concurrent)
