"""The FastAPI application: routes, lifespan (models loaded once into ``app.state``), uploads, metrics.

CPU work (decoding, detection, the classifier) runs in ``app.state.pool``, a thread pool sized to the cores with a
bounded queue (``server/admission.py``), so the event loop only moves bytes.
Uploads are parsed in memory with a byte cap while they stream in: Starlette's
form parser spools files over 1 MB to disk, and nothing a user sends may be written anywhere.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import Callable, Collection
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route, WebSocketRoute

from server import live
from server.access import add_access_middleware, route_path
from server.admission import ClientGone, Overloaded, WorkPool, disconnected
from server.config import Settings, data_dir, get_settings, resolve_path
from server.limits import BodyDeadlineMiddleware, BodyTimeout
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.metrics import Metrics
from server.pipeline import EmotionPipeline, InputError, predict_bytes
from server.schemas import ErrorResponse, HealthResponse, ModelInfo, PredictResponse, ReadyResponse, VideoResponse
from server.shutdown import GracefulShutdown
from server.tracker import FaceTracker
from server.uploads import receive_upload
from server.video import EVERY_MAX, EVERY_MIN, VideoAnalysis, check_temp_dir, discard, ndjson_lines, receive_video

log = logging.getLogger("server")
T = TypeVar("T")


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for 4xx answers, all shaped as ErrorResponse ({"detail": ...})."""
    return {code: {"model": ErrorResponse, "description": text} for code, text in descriptions.items()}


ERROR_RESPONSES = error_responses(
    {
        400: "Empty, malformed or undecodable input",
        401: "API key missing or wrong (only when the server has one)",
        408: "The request body did not arrive in time",
        413: "Over the byte or pixel limit",
        415: "Not an image content type, or an image format the service does not decode (GIF, TIFF, HEIC, ...)",
        422: "Missing `file` field or invalid parameter",
        503: "Server busy: the work queue is full; retry after the Retry-After seconds",
    }
)


# --- metrics ---------------------------------------------------------------------------------------------------


class MetricsMiddleware:
    """Counts HTTP requests by route template and status, and times them (pure ASGI, so streaming is untouched)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.http_in_flight.dec()
            # FastAPI names the route only for its own routes: the page's files, /openapi.json and the docs' assets
            # are "static"; anything else that found no route (a 404, a 405 or 426 from the page mount) "unmatched".
            route = getattr(scope.get("route"), "path", None) or ("static" if status < 400 else "unmatched")
            self.metrics.http_requests.labels(method=scope["method"], route=route, status=str(status)).inc()
            self.metrics.http_duration.labels(route=route).observe(time.perf_counter() - start)


class BugMiddleware:
    """An unhandled exception (a bug) becomes a 500 whose body names nothing of the server (no exception class, no
    path); it is logged here. Not re-raised, unlike Starlette's ServerErrorMiddleware: uvicorn would then cut the
    connection, and a client could see a reset instead of the answer."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except Exception:
            log.exception("unhandled error")
            if started:
                raise  # part of an answer is out: only closing the connection can tell the client
            await JSONResponse({"detail": "internal server error"}, status_code=500)(scope, receive, send)


class HeadAsGet:
    """HEAD wherever GET is answered, as HTTP asks of every server (RFC 9110, 9.3.2) and uptime checks expect:
    FastAPI's routes take GET alone, so a HEAD request runs as a GET here and only its status and headers go out."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: dict) -> None:
            await send({**message, "body": b""} if message["type"] == "http.response.body" else message)

        inner = dict(scope, method="GET")
        try:
            await self.app(inner, receive, headers_only)
        finally:  # what routing added (the route matched), for the metrics middleware outside, which reads this scope
            scope.update({k: v for k, v in inner.items() if k != "method"})


# --- uploads ---------------------------------------------------------------------------------------------------


async def read_upload(request: Request, *, max_bytes: int, kind: str = "image", field: str = "file") -> bytes:
    """The uploaded file from a multipart field ``field`` or a raw ``kind/*`` body, in memory, at most ``max_bytes``.

    Raises ``InputError`` (see ``server.uploads.receive_upload``): 413, 415, 400 or 422 with a message.
    """
    body = bytearray()
    await receive_upload(request.headers, request.stream(), body.extend, max_bytes=max_bytes, kind=kind, field=field)
    return bytes(body)


# --- helpers -------------------------------------------------------------------------------------------------


async def run_cpu(
    request: Request,
    fn: Callable[..., T],
    *args: Any,
    admit: bool = True,
    watch: bool = True,
    release: Callable[[T], Any] | None = None,
) -> T:
    """Run ``fn(*args)`` in the app's CPU pool, off the event loop, once the request body has been read.

    ``Overloaded`` (503) when ``admit`` and the queue is full. With ``watch``, a client that disconnects while the
    job waits gets it dropped (``ClientGone``, answered 499 for the metrics); a streaming response watches itself.
    If the job was already running, its result is handed to ``release`` when it is done.
    """
    pool: WorkPool = request.app.state.pool
    client_gone = partial(disconnected, request.receive) if watch else None
    return await pool.run(partial(fn, *args), admit=admit, client_gone=client_gone, release=release)


ABSOLUTE_DIRS = re.compile(r"(?<![\w.])(?:/[^\s/]+)+/")


def file_names_only(text: str | None) -> str | None:
    """``text`` with the directories of absolute paths cut (``/srv/app/models/x.onnx`` -> ``x.onnx``): answers name
    files, never where the server keeps them (the log has the full paths)."""
    return ABSOLUTE_DIRS.sub("", text) if text else text


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


PLACEHOLDER_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Emotion service</title></head>
<body><h1>Emotion service</h1><p>The web page is not installed (no <code>web/index.html</code>).
See <a href="/docs">/docs</a> for the API.</p></body></html>"""


def upload_body(media: str) -> dict[str, Any]:
    """OpenAPI request body for an upload: multipart field `file`, or the raw body with a `media` content type."""
    binary = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {"file": binary}}
                },
                media: {"schema": binary},
            },
        }
    }


# --- routes --------------------------------------------------------------------------------------------------

router = APIRouter()


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    summary="Detect every face in an image and classify its emotion",
    openapi_extra=upload_body("image/*"),
)
async def predict(
    request: Request, max_faces: int | None = Query(None, ge=1, description="Keep at most this many faces.")
) -> PredictResponse:
    app = request.app
    settings: Settings = app.state.settings
    data = await read_upload(request, max_bytes=settings.max_upload_bytes, kind="image")
    result = await run_cpu(request, predict_bytes, app.state.pipeline, data, settings, max_faces)
    metrics: Metrics = app.state.metrics
    metrics.faces_detected.inc(len(result.faces))
    for stage in ("decode", "detect", "classify"):
        metrics.stage_duration.labels(stage=stage).observe(result.timings_ms[stage] / 1e3)
    return result


VIDEO_ERROR_RESPONSES = error_responses(
    {
        400: "Empty upload or malformed multipart body",
        413: "Over the byte, duration or pixel limit, or decoding it took longer than the analysis time limit",
        415: "Not a video: unsupported container or codec, a still image, text, or a file that cannot be opened",
        422: "No decodable frames, a truncated video, a missing `file` field or an invalid parameter",
        503: "Server busy: the work queue is full, or no room is left to store the video; retry after the "
        "Retry-After seconds",
    }
)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the video temp folder's disk, quota or file size limit


@router.post(
    "/predict/video",
    response_model=VideoResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": "`format=json`: the whole answer. `format=ndjson`: one `VideoFrame` per line as it is "
            "computed, then a `VideoStreamEnd` line (or a `VideoStreamError` line).",
        },
        **VIDEO_ERROR_RESPONSES,
    },
    summary="Classify the faces of one frame per `every` seconds of a video",
    openapi_extra=upload_body("video/*"),
)
async def predict_video(
    request: Request,
    every: float = Query(
        1.0, ge=EVERY_MIN, le=EVERY_MAX, allow_inf_nan=False, description="Seconds between analysed frames."
    ),
    format: Literal["json", "ndjson"] = Query("json", description="`ndjson` streams one line per analysed frame."),
    smoothing: float | None = Query(
        None,
        ge=0.0,
        le=60.0,
        allow_inf_nan=False,
        description="Time constant (s) of each face track's moving average of probabilities; 0: each frame's own "
        "values. Default: the server's `EMOTION_SMOOTHING_SECONDS`.",
    ),
    raw: bool = Query(False, description="Also give each frame's own probabilities as `raw_probabilities`."),
) -> Any:
    app = request.app
    settings: Settings = app.state.settings
    # Streams to a temporary file (deleted below whatever happens): a video does not fit the in-memory upload path.
    try:
        path = await receive_video(
            request.headers, request.stream(), max_bytes=settings.max_video_bytes, temp_dir=settings.video_temp_dir
        )
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        # Uploads in progress filled the folder (each is deleted when its answer ends): busy for now, not broken.
        log.warning("video upload refused: %s in the video temp folder", exc.strerror)
        detail = f"server busy: no room left to store the video; retry after {settings.retry_after} s"
        raise StarletteHTTPException(503, detail, headers={"Retry-After": str(settings.retry_after)}) from None
    analysis: VideoAnalysis | None = None
    streaming = False
    try:
        # Opening probes the file and decodes the first frame: errors up to here are a real 4xx, also for ndjson.
        tracker = FaceTracker.from_settings(settings, raw=raw)
        if smoothing is not None:
            tracker.smoothing_seconds = smoothing
        open_video = partial(VideoAnalysis.open, tracker=tracker)
        # A client that leaves while the video opens: the opened decoder (and its thread) is closed when ready.
        release = partial(discard, path=path, submit=app.state.executor.submit)
        analysis = await run_cpu(request, open_video, path, app.state.pipeline, every, settings, release=release)
        if format == "ndjson":
            # The generator deletes the file when it ends, fails or the client disconnects; the background task
            # (run after a disconnect too) covers a stream that was cancelled before its first line.
            # Admitted once, above: the frames of an admitted video are never shed half-way. The response watches
            # for a disconnect itself and cancels the stream, which drops the frame waiting for a thread.
            submit = app.state.executor.submit
            lines = ndjson_lines(analysis, path, partial(run_cpu, request, admit=False, watch=False), submit)
            streaming = True
            return StreamingResponse(
                lines, media_type="application/x-ndjson", background=BackgroundTask(discard, analysis, path, submit)
            )
        frames = []
        while (frame := await run_cpu(request, analysis.next_frame, admit=False)) is not None:
            frames.append(frame)
        return analysis.response(frames)
    finally:
        if not streaming:
            discard(analysis, path, app.state.executor.submit)


@router.get("/model", response_model=ModelInfo, summary="The emotion model's metadata and the face detector in use")
async def model_info(request: Request) -> ModelInfo:
    pipeline: EmotionPipeline = request.app.state.pipeline
    spec = pipeline.classifier.spec
    return ModelInfo(
        path=pipeline.classifier.path.name,
        labels=spec.labels,
        input_size=list(spec.input_size),
        channels=spec.channels,
        mean=spec.mean,
        std=spec.std,
        crop_margin=spec.crop_margin,
        align=spec.align,
        face_template=[list(p) for p in spec.face_template] if spec.align == "landmarks" else None,
        metadata=spec.metadata,
        detector=pipeline.detector.name,
        detector_path=Path(pipeline.detector.path).name if pipeline.detector.path else None,
        detector_fallback=file_names_only(pipeline.detector.fallback_reason),
        max_faces=request.app.state.settings.max_faces,
    )


MODEL_CARD_NAME = "MODEL_CARD.md"


@router.get(
    "/model/card",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The model card, Markdown as plain text"},
        404: {"model": ErrorResponse, "description": "No model card beside the model file"},
    },
    summary="The model card: how the model was made, how well it does, what its labels mean",
)
async def model_card(request: Request) -> PlainTextResponse:
    # The card lives beside the model file it describes; a model of one's own has no card unless one is put there.
    pipeline: EmotionPipeline = request.app.state.pipeline
    card = Path(pipeline.classifier.path).parent / MODEL_CARD_NAME
    if not card.is_file():
        raise StarletteHTTPException(404, f"no {MODEL_CARD_NAME} beside the model file {pipeline.classifier.path.name}")
    return PlainTextResponse(card.read_text(encoding="utf-8"), media_type="text/plain; charset=utf-8")


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="Readiness: the model and detector are loaded, and the server is not shutting down",
)
async def readyz(request: Request) -> ReadyResponse | JSONResponse:
    pipeline: EmotionPipeline | None = getattr(request.app.state, "pipeline", None)
    shutdown: GracefulShutdown | None = getattr(request.app.state, "shutdown", None)
    if pipeline is None or (shutdown is not None and shutdown.draining):
        draining = shutdown is not None and shutdown.draining
        return JSONResponse(ReadyResponse(ready=False, draining=draining).model_dump(), status_code=503)
    return ReadyResponse(ready=True, model=pipeline.classifier.path.name, detector=pipeline.detector.name)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (all worker processes)")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


# --- application -----------------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    check_temp_dir(settings.video_temp_dir)  # a folder video uploads cannot be written to stops start-up, named
    # A model that breaks the contract stops start-up here, with the ModelError naming the key.
    pipeline = EmotionPipeline.from_settings(settings)
    spec = pipeline.classifier.spec
    log.info(
        "model %s: %d labels %s, input %s x%d, crop: align %s, margin %.2f",
        pipeline.classifier.path,
        len(spec.labels),
        spec.labels,
        spec.input_size,
        spec.channels,
        spec.align,
        spec.crop_margin,
    )
    log.info(
        "face detector: %s%s (detection on copies of at most %d px)",
        pipeline.detector.name,
        f" ({pipeline.detector.path})" if pipeline.detector.path else "",
        pipeline.detect_max_side,
    )
    log.info(
        "%d CPU thread(s), classifier providers %s", settings.cpu_threads, pipeline.classifier.session.get_providers()
    )
    app.state.pipeline = pipeline
    metrics: Metrics = app.state.metrics

    def work_gauges(queued: int, running: int) -> None:
        metrics.work_queue_depth.set(queued)
        metrics.work_in_progress.set(running)

    app.state.pool = WorkPool(
        settings.cpu_threads,
        settings.queue_size,
        settings.retry_after,
        on_skipped=metrics.work_skipped.inc,
        on_change=work_gauges,
    )
    app.state.executor = app.state.pool.executor  # for clean-up jobs that need no admission (closing decoders)
    app.state.metrics.model_info.labels(
        model=pipeline.classifier.path.name, version=spec.metadata.get("version", ""), detector=pipeline.detector.name
    ).set(1)
    # SIGTERM drains first (not ready, live streams moved), then uvicorn's own shutdown runs: server.shutdown.
    app.state.shutdown = GracefulShutdown(app, settings.drain_seconds)
    app.state.shutdown.install()
    try:
        yield
    finally:
        app.state.shutdown.uninstall()
        app.state.pipeline = None
        app.state.pool.shutdown()
        app.state.metrics.process_exited()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # FastAPIOffline is FastAPI with /docs and /redoc served from assets installed with fastapi-offline (under
    # /static-offline-docs) instead of a CDN, so the API page works without internet.
    app = FastAPIOffline(
        title="Emotion service",
        description="Face detection (OpenCV) + ONNX emotion classification. Send an image to `POST /predict`.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.pipeline = None
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyDeadlineMiddleware, total=settings.body_timeout, idle=settings.body_idle_timeout)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BugMiddleware)
    add_access_middleware(app, settings)  # outermost: refused requests are counted as unmatched, not routed

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(BodyTimeout)
    async def body_timeout(_: Request, exc: BodyTimeout) -> JSONResponse:
        # The rest of the body may still be on its way: the connection cannot be reused.
        return JSONResponse({"detail": exc.detail}, status_code=408, headers={"Connection": "close"})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        # The route's template, never the path as sent: a label value a client could choose without bound.
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        request.app.state.metrics.requests_shed.labels(route=route).inc()
        return JSONResponse({"detail": exc.detail}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(_: Request, exc: ClientDisconnect) -> Response:
        # The client closed the connection mid-upload: no one is left to answer, and it is not a server error.
        log.info("client disconnected before its upload was complete")
        return Response(status_code=499)  # nginx's "client closed request", for the metrics

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, exc: ClientGone) -> Response:
        log.info("client disconnected before its job was done: job dropped (or its result released, if it was running)")
        return Response(status_code=499)

    app.include_router(router)
    # Routers of other modules (video, live) are included here, before the static mount below.
    app.include_router(live.router)
    live.ClientTextErrorFilter.install()

    # Unless EMOTION_WEB_DIR is set, the page is the shipped one wherever the server starts: a `web` folder in the
    # working directory (any project's) must not replace it.
    web_dir = resolve_path(Path(settings.web_dir)) if "web_dir" in settings.model_fields_set else data_dir("web")

    @app.get("/", include_in_schema=False)
    async def index() -> Any:
        page = web_dir / "index.html"
        return FileResponse(page) if page.is_file() else HTMLResponse(PLACEHOLDER_PAGE)

    # Mounted last: a mount at "/" matches every path, so routes added after it would never be reached.
    if web_dir.is_dir():
        api = {r.path: set(r.methods) for r in [*router.routes, *app.routes] if isinstance(r, Route) and r.methods}
        api = {path: methods | {"HEAD"} if "GET" in methods else methods for path, methods in api.items()}  # HeadAsGet
        sockets = {r.path for r in [*live.router.routes, *app.routes] if isinstance(r, WebSocketRoute)}
        app.mount("/", WebFiles(api, sockets, directory=web_dir, html=True), name="web")
    return app


class WebFiles(StaticFiles):
    """The page's files. An API path asked with another method gets 405 and an Allow header, and a WebSocket path
    asked over plain HTTP 426, not the 404 the mount at "/" would otherwise answer (Starlette hands a method or
    protocol mismatch on to the next matching route). An API path with a trailing slash (``POST /predict/``) gets a
    404 naming the route, not a 405 telling it to use GET; a WebSocket handshake on another path than the live
    route gets a 404 saying where that is, not StaticFiles' 403 without a word (which read as a wrong API key)."""

    def __init__(self, api_methods: dict[str, set[str]], sockets: Collection[str] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.api_methods = api_methods
        self.sockets = sockets

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = route_path(scope)
        route = path.rstrip("/")
        if route != path and (route in self.sockets or (scope["type"] == "http" and route in self.api_methods)):
            detail = f"no route {path}: the route is {route}, without the trailing slash"
            await self.not_found(detail, scope, receive, send)
            return
        if scope["type"] == "websocket" and path not in self.sockets:
            routes = " or ".join(sorted(self.sockets)) or "none"
            await self.not_found(f"no WebSocket route at {path}: the live stream is at {routes}", scope, receive, send)
            return
        if scope["type"] == "http" and path in self.sockets:
            detail = f"{path} is a WebSocket route: connect with a WebSocket client (ws:// or wss://)"
            answer = JSONResponse({"detail": detail}, status_code=426, headers={"Upgrade": "websocket"})
            await answer(scope, receive, send)
            return
        # The page's files take GET and HEAD; StaticFiles' own 405 for them had no Allow header (RFC 9110 asks one).
        allowed = self.api_methods.get(path, {"GET", "HEAD"}) if scope["type"] == "http" else None
        if allowed and scope["method"] not in allowed:
            methods = ", ".join(sorted(allowed))
            detail = f"method {scope['method']} is not allowed on {path}: use {methods}"
            await JSONResponse({"detail": detail}, status_code=405, headers={"Allow": methods})(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def not_found(self, detail: str, scope: dict, receive: Callable, send: Callable) -> None:
        """404 with a message; on a WebSocket handshake as the HTTP answer that refuses it, where the server can send
        one (ASGI's websocket.http.response extension, which uvicorn has), else StaticFiles' close (a bare 403)."""
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await super().__call__(scope, receive, send)
            return
        await JSONResponse({"detail": detail}, status_code=404)(scope, receive, send)


app = create_app()
