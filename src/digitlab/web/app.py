"""``create_app(predictor)``: the draw-a-digit page, the JSON API and a health check.

Bad input never gets a 500, and every error body is ``{"error": "..."}``: a body over the limit
gets 413 (after a bounded drain, so that every client reads it), a body too slow to arrive 408,
a wrong content type 415, an image that cannot be read, holds no digit, or malformed JSON 422,
oversized headers 431, and more predictions at once than ``max_concurrent`` a fast 503 with
``Retry-After``. One log line per request. The limits are ``config.ServeConfig``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitlab import DigitlabError, __version__
from digitlab.config import IMAGE_SIDE, ServeConfig
from digitlab.explain import overlay_png
from digitlab.predict import Predictor
from digitlab.preprocess import ImageError
from digitlab.schemas import DigitAnswer, NumberAnswer

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
    """Pure ASGI middleware in front of the routes: limits, and the request log line.

    For the prediction routes it reads the whole body itself, within ``body_timeout_seconds``
    (else 408) and ``max_body_bytes`` (else 413), while at most ``max_receiving`` requests may
    be sending; only then does the request take one of the ``max_concurrent`` prediction slots
    (else a fast 503). A slow sender therefore holds no slot. Written against ASGI rather than
    as a Starlette "BaseHTTPMiddleware" to count bytes as they arrive (a chunked upload has no
    length) and to refuse before the routes run.
    """

    def __init__(self, app, limits: ServeConfig = LIMITS):
        self.app, self.limits = app, limits
        self.in_flight = 0  # requests holding a prediction slot
        self.receiving = 0  # requests still sending their bodies

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
        except ClientGone:
            status["code"] = 499  # nginx's code for "client closed the request": not an error
        finally:
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status["code"],
                1e3 * (time.perf_counter() - started),
            )

    async def _guarded(self, scope, receive, send):
        headers = scope.get("headers") or []
        if len(headers) > self.limits.max_headers or (
            sum(len(k) + len(v) for k, v in headers) > self.limits.max_header_bytes
        ):
            return await _refuse(send, 431, "request headers too large or too many")
        if scope["method"] == "OPTIONS":
            return await _options(scope, send)
        if not scope["path"].startswith("/api/predict") or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.receiving >= self.limits.max_receiving:
            return await _refuse(send, 503, "too many uploads at once: retry shortly", RETRY)
        self.receiving += 1
        try:
            body = await self._read_body(scope, receive)
        except ApiError as error:
            return await _refuse(send, error.status, error.message, error.headers)
        finally:
            self.receiving -= 1
        if self.in_flight >= self.limits.max_concurrent:
            return await _refuse(send, 503, "too many requests at once: retry shortly", RETRY)
        self.in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1

    async def _read_body(self, scope, receive) -> bytes:
        """The whole body within the time and size limits, else ApiError (408 or 413)."""
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._drain(receive, int(declared))
            raise ApiError(413, self._too_large(), {"Connection": "close"})
        chunks, received = [], 0
        # One timer for the whole body (asyncio.timeout adds no task per chunk, unlike
        # wait_for: measured, a task per receive cost ~25% of throughput at 16 clients).
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > limit:
                        break
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(408, SLOW_BODY, {"Connection": "close"}) from None
        await self._drain(receive, None)
        raise ApiError(413, self._too_large(), {"Connection": "close"})

    async def _drain(self, receive, declared: int | None) -> None:
        """Read and discard the rest of a refused body, within bounds (see max_drain_bytes)."""
        if declared is not None and declared > self.limits.max_drain_bytes:
            return
        drained = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                while drained <= self.limits.max_drain_bytes:
                    message = await receive()
                    drained += len(message.get("body", b""))
                    if message["type"] == "http.disconnect" or not message.get("more_body"):
                        return
        except TimeoutError:
            return  # too slow to drain: answer anyway

    def _too_large(self) -> str:
        return f"request body over the limit of {self.limits.max_body_bytes / 2**20:.1f} MiB"


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


RETRY = {"Retry-After": "1"}
SLOW_BODY = "the request body took too long to arrive"


def _replay(body: bytes, receive):
    """An ASGI receive that gives the routes the body already read, then waits as usual."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


ALLOWED = {"/": "GET, HEAD, OPTIONS", "/api/health": "GET, HEAD, OPTIONS"}


async def _options(scope, send) -> None:
    """OPTIONS on any path: which methods it takes (no CORS: the page is same-origin)."""
    path = scope["path"]
    if path.startswith("/api/predict"):
        allowed = "POST, OPTIONS"
    else:
        allowed = ALLOWED.get(path, "GET, HEAD, OPTIONS")
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", allowed.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send, status: int, message: str, headers: dict | None = None) -> None:
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
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise ApiError(422, "pixels must be 28 rows of 28 numbers from 0 to 255") from None
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE) or not np.isfinite(array).all():
        raise ApiError(422, f"pixels must be 28x28 numbers, got shape {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ApiError(422, "pixels must be numbers from 0 to 255")
    return array.astype(np.uint8)


async def _images_from(
    request: Request, many: bool, limits: ServeConfig
) -> list[tuple[str, object]]:
    """The (name, image) pairs of a request: multipart files, a raw image body, or JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(
            max_files=limits.max_batch + 1, max_part_size=limits.max_body_bytes
        )
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
            payload = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: nested ~1,000 deep
            raise ApiError(422, "the body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(422, 'expected a JSON object: {"pixels": [[...28 numbers], ...]}')
        if many and isinstance(payload.get("images"), list):
            if len(payload["images"]) > limits.max_batch:
                raise _too_many(len(payload["images"]), limits)
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


def _too_many(count: int, limits: ServeConfig) -> ApiError:
    return ApiError(413, f"{count} images in one batch; at most {limits.max_batch}")


IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
PIXELS_BODY = {
    "schema": {
        "type": "object",
        "required": ["pixels"],
        "properties": {
            "pixels": {
                "description": "28 rows of 28 numbers 0-255, light ink on dark (like MNIST)",
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}},
            }
        },
    }
}
FORM_BODY = {
    "schema": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary"}},
    }
}
ERRORS = {
    status: {
        "description": meaning,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
            }
        },
    }
    for status, meaning in {
        408: "the body took too long to arrive",
        413: "the body (or the batch) is over the limit",
        415: "a content type other than an image, a multipart form or JSON",
        422: "an image that cannot be read or holds no digit; malformed JSON",
        431: "request headers too large",
        503: "too many requests at once (see Retry-After)",
    }.items()
}


def _reader_summary(reader: Predictor | None) -> dict:
    """How ``?number=true`` is read: by which number reader, or by blob segmentation."""
    if reader is None:
        return {"reader": "segmentation", "model": None, "test_accuracy": None}
    return {
        "reader": "number reader",
        "model": reader.manifest.get("model"),
        "test_accuracy": reader.manifest.get("metrics", {}).get("test_accuracy"),
        "created": reader.manifest.get("created"),
        "description": reader.description,
        "ready_made": reader.ready_made,
        "checked_by": reader.checker.description if reader.checker else None,
    }


def _request_body(*kinds: tuple[str, dict]) -> dict:
    return {"requestBody": {"required": True, "content": dict(kinds)}}


def create_app(
    predictor: Predictor, limits: ServeConfig = LIMITS, number_reader: Predictor | None = None
):
    """The ASGI application: FastAPI routes wrapped in the Guard middleware.

    ``predictor`` reads digits; ``number_reader`` (a number reader run) reads ``?number=true``
    images, which without one are cut into blobs and read by ``predictor``.
    """
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

    def read_one(image, number: bool, explain: bool = False) -> dict:
        reader = number_reader if number and number_reader is not None else predictor
        [(_, answer)] = reader.predict_many([("image", image)], number=number)
        if isinstance(answer, ImageError):
            raise ApiError(422, answer.reason)
        result = answer.to_dict(with_input=True)
        if explain and not number:
            heat = predictor.explain(answer.input, answer.label)
            result["explanation_png"] = base64.b64encode(overlay_png(heat)).decode("ascii")
        return result

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        """404, 405, a malformed multipart form: the same {"error": ...} body as the rest."""
        return _json_error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _json_error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(DigitlabError)
    async def digitlab_error(request: Request, error: DigitlabError):
        return _json_error(422, error.reason if isinstance(error, ImageError) else str(error))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    @app.head("/api/health", include_in_schema=False)
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
            "number_reader": _reader_summary(number_reader),
            # which model answers, for people; ready_made: the one shipped with digitlab
            "description": predictor.description,
            "ready_made": predictor.ready_made,
        }

    @app.post(
        "/api/predict",
        openapi_extra=_request_body(
            ("image/png", IMAGE_BODY),
            ("image/jpeg", IMAGE_BODY),
            ("multipart/form-data", FORM_BODY),
            ("application/json", PIXELS_BODY),
        ),
        responses={
            200: {"model": DigitAnswer | NumberAnswer, "description": "the digit, or the number"},
            **ERRORS,
        },
    )
    async def predict(
        request: Request, number: bool = False, explain: bool = False
    ) -> JSONResponse:
        """One image: multipart ``file``, a raw image body, or JSON ``{"pixels": 28x28}``.

        With ``?number=true`` the image holds a written number: answers its ``text``, which
        ``reader`` read it (the number reader, or segmentation), and each digit with its ``x``
        in the image; ``input_png`` is the strip the reader saw (or the digits side by side);
        with a reader that has the rule, ``is_number`` (false: a word, a doodle).
        Otherwise ``label``, ``confidence``, ``probabilities``, ``is_digit`` and ``input_png``
        (the 28x28 image the model saw, base64 PNG); with ``?explain=true`` also ``explanation_png``, a
        28x28 red overlay for ``input_png``: the pixels the answer rests on (occlusion).
        """
        [(_, image)] = await _images_from(request, many=False, limits=limits)
        # A JSONResponse straight away: FastAPI's encoder would walk the answer again.
        return JSONResponse(await in_worker(read_one, image, number, explain))

    @app.post(
        "/api/predict/batch",
        openapi_extra=_request_body(
            ("multipart/form-data", FORM_BODY),
            (
                "application/json",
                {"schema": {"type": "object", "properties": {"images": {"type": "array"}}}},
            ),
        ),
        responses=ERRORS,
    )
    async def predict_batch(request: Request) -> JSONResponse:
        """Many images: a multipart form with several files, or JSON ``{"images": [...]}``.

        Each result is a prediction or ``{"name", "error"}``; one bad image fails only itself.
        """
        images = await _images_from(request, many=True, limits=limits)
        if len(images) > limits.max_batch:
            raise _too_many(len(images), limits)
        return JSONResponse({"results": await in_worker(read_batch, images)})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, limits)
