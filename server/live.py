"""``WS /ws``: the live stream. Binary messages are frames (JPEG/WebP/PNG); text messages are JSON control messages.

Each connection runs two tasks. The receiver reads every message as soon as it arrives and keeps only the newest
frame in a one-place slot, replacing (dropping) an older frame that was not started yet. The worker takes the frame
from the slot, runs decode + pipeline in the app's thread pool and sends one JSON result. So a client that sends
faster than the server can process never builds a queue: per connection there is at most one pending frame plus the
one being processed, and the result the client sees is always for the newest frame it sent.

Messages from the server (all JSON text):

- result: ``{"type": "result", "frame_id", "width", "height", "faces", "server_ms", "dropped", "timings_ms",
  "detection"}``; ``frame_id`` numbers the binary messages of the connection from 1, ``dropped`` counts frames
  replaced before processing so far (so ``frame_id == results + errors + dropped`` for the frames up to it). Each
  face has the ``track_id`` it keeps on this connection and smoothed probabilities (server/tracker.py); ``detection``
  says whether the frame had a full detection (``"full"``) or a search around the tracked faces (``"window"``).
- error: ``{"type": "error", "error": "...", "frame_id"?}``: undecodable or empty frame, bad control message; the
  connection stays open.
- ack: ``{"type": "ack", "config": {"max_faces": n, "smoothing": s, "raw": b}}`` after a control message with any of
  those keys (optionally with ``"type": "config"``): ``max_faces`` faces per frame, ``smoothing`` the time constant
  in seconds of the labels' moving average (0: each frame's own values), ``raw: true`` adds each frame's own
  probabilities as ``raw_probabilities``. ``{"type": "ping"}`` gets ``{"type": "pong"}``.

Close codes, each after an error message saying why: 1009 for a frame over ``ws_max_frame_bytes`` (a frame over
twice that is cut off by the WebSocket layer while it arrives: 1009 without the message, the close reason names the
limit); 1013 (try again later) when ``ws_max_connections`` are already open; 1001 (going away) after
``ws_idle_timeout`` seconds without a message from the client or ``ws_max_age`` seconds in all (the page
reconnects); 1001 also when the server shuts down (``server.shutdown``): the frame in hand is answered first, and
the client should reconnect at once (through a load balancer it reaches another replica); 1011 if the model is not
loaded; 1008 from ``server/access.py`` for a wrong Origin or API key (the page stops and says why).
A frame that finds the CPU queue full gets ``{"type": "error", "frame_id", "error": "server busy: ..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from server.access import chosen_subprotocol
from server.admission import Overloaded, WorkPool
from server.pipeline import InputError, decode_image
from server.schemas import Face
from server.tracker import FaceTracker, TrackingPipeline

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.config import Settings

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_GOING_AWAY = 1001
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


class ClientTextErrorFilter(logging.Filter):
    """uvicorn logs a text frame that is not UTF-8 at ERROR with a traceback, then closes with 1007 as the protocol
    says. It is the client's mistake, not the server's: logged at INFO, without the traceback."""

    MESSAGE = "Invalid UTF-8 sequence received from client"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(self.MESSAGE):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


class ClientNotReading(Exception):
    """The client took none of the session's answers for ``ws_idle_timeout`` seconds."""


class LiveResult(BaseModel):
    type: Literal["result"] = "result"
    frame_id: int = Field(description="Number of the binary message on this connection, from 1.")
    width: int = Field(description="Width of the decoded frame; boxes are in its pixels.")
    height: int
    faces: list[Face] = Field(description="Largest face first.")
    server_ms: float = Field(description="Milliseconds from taking the frame to having its result.")
    dropped: int = Field(description="Frames of this connection replaced by newer ones before processing, so far.")
    timings_ms: dict[str, float]
    detection: Literal["full", "window"] = Field(
        "full", description="'full': the whole frame was searched; 'window': only around the tracked faces."
    )


class LiveError(BaseModel):
    type: Literal["error"] = "error"
    error: str
    frame_id: int | None = None


class LiveAck(BaseModel):
    type: Literal["ack"] = "ack"
    config: dict[str, Any]


@dataclass
class Frame:
    frame_id: int
    data: bytes
    received: float  # time.monotonic() on arrival: the frame's time for tracking and smoothing


@dataclass
class AnalysedFrame:
    width: int
    height: int
    faces: list[Face]
    timings_ms: dict[str, float]
    full_detection: bool


def analyse_frame(stream: TrackingPipeline, frame: Frame, settings: Settings, max_faces: int) -> AnalysedFrame:
    """Decode + tracked pipeline, for the thread pool."""
    t0 = time.perf_counter()
    image = decode_image(frame.data, settings)
    decode_ms = (time.perf_counter() - t0) * 1e3
    faces, timings, full = stream.analyse(image, frame.received, max_faces)
    timings = {"decode": round(decode_ms, 3), **timings, "total": round(decode_ms + timings["total"], 3)}
    return AnalysedFrame(image.shape[1], image.shape[0], faces, timings, full)


class LatestFrameSlot:
    """A one-place mailbox where a new frame replaces one not yet taken; ``take`` waits for a frame."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        return 0 if self._frame is None else 1

    def put(self, frame: Frame) -> None:
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def take(self) -> Frame | None:
        """The newest frame, or None once closed."""
        while self._frame is None and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        return frame


class LiveHub:
    """Connections of the app: the cap, and counters the tests and /metrics read."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        self.rejected = 0
        self.frames_received = 0
        self.frames_processed = 0
        self.frames_dropped = 0
        self.max_pending = 0  # most frames ever waiting in one connection's slot (by design at most 1)
        self.sessions: set[LiveSession] = set()
        self.draining = False

    async def go_away(self, timeout: float) -> int:
        """Shutdown: every session answers the frame in hand, then closes with 1001; new ones are closed at once.
        Returns how many sessions were open."""
        self.draining = True
        sessions = list(self.sessions)
        for session in sessions:
            session.go_away()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return len(sessions)

    @classmethod
    def of(cls, app: FastAPI) -> LiveHub:
        # Created on first use: the event loop is single-threaded, so no race between connections.
        hub = getattr(app.state, "live_hub", None)
        if hub is None:
            hub = app.state.live_hub = cls(app.state.settings.ws_max_connections)
        return hub


MAX_CONTROL_CHARS = 1024  # control messages are a few dozen characters; longer ones are refused unparsed
CONFIG_KEYS = ("max_faces", "smoothing", "raw")
MAX_SMOOTHING_SECONDS = 60.0


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never echoes a client's payload in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_control(text: str, settings: Settings) -> dict[str, Any]:
    """A control message -> config changes; ``ValueError`` with a message for the client when it is invalid."""
    example = 'control messages are JSON objects such as {"max_faces": 3}'
    if len(text) > MAX_CONTROL_CHARS:
        raise ValueError(f"control message is {len(text)} characters, over the limit of {MAX_CONTROL_CHARS}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{example}: {exc.msg}") from exc
    except RecursionError as exc:  # deep nesting ("[[[[...") within the length limit
        raise ValueError(f"{example}: nested too deeply") from exc
    if not isinstance(message, dict):
        raise ValueError(example)
    kind = message.pop("type", "config")
    if kind == "ping":
        return {"ping": True}
    if kind != "config":
        raise ValueError(f"unknown message type {_shown(kind)}: expected 'config' or 'ping'")
    unknown = sorted(set(message) - set(CONFIG_KEYS))
    if unknown:
        shown = ", ".join(_shown(key) for key in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise ValueError(f"unknown config keys [{shown}]: the settings are {', '.join(CONFIG_KEYS)}")
    config: dict[str, Any] = {}
    if "max_faces" in message:
        n = message["max_faces"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= settings.max_faces:
            raise ValueError(f"max_faces must be an integer from 1 to {settings.max_faces}, got {_shown(n)}")
        config["max_faces"] = n
    if "smoothing" in message:
        s = message["smoothing"]
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= MAX_SMOOTHING_SECONDS:
            raise ValueError(
                f"smoothing must be a number of seconds from 0 to {MAX_SMOOTHING_SECONDS:g}, got {_shown(s)}"
            )
        config["smoothing"] = float(s) + 0.0  # + 0.0: -0.0 is echoed as 0.0
    if "raw" in message:
        if not isinstance(message["raw"], bool):
            raise ValueError(f"raw must be true or false, got {_shown(message['raw'])}")
        config["raw"] = message["raw"]
    return config


class LiveSession:
    """One WebSocket connection: a receiver filling the slot, a worker emptying it."""

    def __init__(self, websocket: WebSocket, hub: LiveHub) -> None:
        self.websocket = websocket
        self.app = websocket.app
        self.settings: Settings = self.app.state.settings
        self.hub = hub
        self.slot = LatestFrameSlot()
        # The default within the server's limit: the ack says what is applied.
        self.max_faces = min(self.settings.ws_default_max_faces, self.settings.max_faces)
        self.frames = 0
        self.leaving = False
        # Track ids and smoothing live as long as the connection.
        self.tracker = FaceTracker.from_settings(self.settings)
        self.stream = TrackingPipeline(self.app.state.pipeline, self.tracker, self.settings.track_full_detect_seconds)
        self._send_lock = asyncio.Lock()

    def go_away(self) -> None:
        """The worker answers the frames already received (in hand and waiting: at most two) and stops; frames
        that arrive from now on are ignored; ``run`` then closes with 1001."""
        self.leaving = True
        self.slot.close()

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        text = message.model_dump_json() if isinstance(message, BaseModel) else json.dumps(message)
        await self._write(lambda: self.websocket.send_text(text))

    async def close(self, code: int, reason: str) -> None:
        await self._write(lambda: self.websocket.close(code, reason))

    async def _write(self, write: Callable[[], Awaitable[None]]) -> None:
        """An answer or the close frame. Receiver and worker both write; one lock keeps their messages whole and in
        order. A client that reads nothing fills the socket buffers and a write then waits for room that never comes:
        after the idle timeout the session ends (ClientNotReading), freeing its live slot, as a client that sends
        nothing is closed."""

        async def in_turn() -> None:
            async with self._send_lock:
                await write()

        try:
            await asyncio.wait_for(in_turn(), self.settings.ws_idle_timeout)
        except asyncio.TimeoutError:
            raise ClientNotReading(f"client read no answer for {self.settings.ws_idle_timeout:g} s") from None

    async def run(self) -> None:
        receiver = asyncio.create_task(self.receive_loop())
        worker = asyncio.create_task(self.work_loop())
        try:
            done, _ = await asyncio.wait({receiver, worker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, ClientNotReading):
                    log.info("live session ended: %s", exc)
                elif exc is not None and not isinstance(exc, WebSocketDisconnect):
                    log.error("live session failed", exc_info=exc)
            if self.leaving and not receiver.done():
                with contextlib.suppress(ClientNotReading):
                    await self.close(CLOSE_GOING_AWAY, "server going away, reconnect")
        finally:
            self.slot.close()
            for task in (receiver, worker):
                task.cancel()
            await asyncio.gather(receiver, worker, return_exceptions=True)

    async def receive_next(self, closes_at: float) -> dict[str, Any] | None:
        """The next message, or None once the connection was closed for idling or for its age."""
        loop = asyncio.get_running_loop()
        idle, age_left = self.settings.ws_idle_timeout, closes_at - loop.time()
        try:
            return await asyncio.wait_for(self.websocket.receive(), max(0.0, min(idle, age_left)))
        except asyncio.TimeoutError:
            if age_left <= idle:
                reason = f"connection closed after its maximum age of {self.settings.ws_max_age:g} s; reconnect"
            else:
                reason = f"connection closed after {idle:g} s without a message"
            await self.send(LiveError(error=reason))
            await self.close(CLOSE_GOING_AWAY, reason[:120])
            return None

    async def receive_loop(self) -> None:
        metrics = self.app.state.metrics
        closes_at = asyncio.get_running_loop().time() + self.settings.ws_max_age
        while True:
            message = await self.receive_next(closes_at)
            if message is None or message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None and self.leaving:
                continue  # shutting down: the client resends it to the replica it reconnects to
            if data is not None:
                self.frames += 1
                self.hub.frames_received += 1
                if len(data) > self.settings.ws_max_frame_bytes:
                    await self.send(
                        LiveError(
                            frame_id=self.frames,
                            error=f"frame is {len(data)} bytes, over the limit of {self.settings.ws_max_frame_bytes}",
                        )
                    )
                    await self.close(CLOSE_MESSAGE_TOO_BIG, "frame too large")
                    return
                if not data:
                    metrics.ws_frames.labels(outcome="error").inc()
                    await self.send(
                        LiveError(frame_id=self.frames, error="empty frame: send a JPEG, WebP, PNG or BMP image")
                    )
                    continue
                before = self.slot.dropped
                self.slot.put(Frame(self.frames, data, time.monotonic()))
                if self.slot.dropped > before:
                    self.hub.frames_dropped += 1
                    metrics.ws_frames.labels(outcome="dropped").inc()
                self.hub.max_pending = max(self.hub.max_pending, self.slot.pending)
            elif message.get("text") is not None:
                await self.control(message["text"])

    async def control(self, text: str) -> None:
        try:
            config = parse_control(text, self.settings)
        except ValueError as exc:
            await self.send(LiveError(error=str(exc)))
            return
        if config.pop("ping", False):
            await self.send({"type": "pong"})
            return
        self.max_faces = config.get("max_faces", self.max_faces)
        self.tracker.smoothing_seconds = config.get("smoothing", self.tracker.smoothing_seconds)
        self.tracker.raw = config.get("raw", self.tracker.raw)
        await self.send(
            LiveAck(
                config={
                    "max_faces": self.max_faces,
                    "smoothing": self.tracker.smoothing_seconds,
                    "raw": self.tracker.raw,
                }
            )
        )

    async def work_loop(self) -> None:
        pool: WorkPool = self.app.state.pool
        metrics = self.app.state.metrics
        while True:
            frame = await self.slot.take()
            if frame is None:
                return
            dropped = self.slot.dropped
            start = time.perf_counter()
            try:
                # Cancelled with this task when the client goes: a frame still waiting for a thread is dropped.
                result = await pool.run(partial(analyse_frame, self.stream, frame, self.settings, self.max_faces))
            except Overloaded as exc:
                metrics.ws_frames.labels(outcome="shed").inc()
                await self.send(LiveError(frame_id=frame.frame_id, error=exc.detail))
                continue
            except InputError as exc:
                metrics.ws_frames.labels(outcome="error").inc()
                await self.send(LiveError(frame_id=frame.frame_id, error=exc.detail))
                continue
            except Exception:  # a bug, but one frame must not end the stream
                log.exception("live frame %d failed", frame.frame_id)
                metrics.ws_frames.labels(outcome="error").inc()
                await self.send(LiveError(frame_id=frame.frame_id, error="internal error"))
                continue
            server_s = time.perf_counter() - start
            self.hub.frames_processed += 1
            metrics.ws_frames.labels(outcome="processed").inc()
            metrics.ws_frame_duration.observe(server_s)
            await self.send(
                LiveResult(
                    frame_id=frame.frame_id,
                    width=result.width,
                    height=result.height,
                    faces=result.faces,
                    server_ms=round(server_s * 1e3, 3),
                    dropped=dropped,
                    timings_ms=result.timings_ms,
                    detection="full" if result.full_detection else "window",
                )
            )


@router.websocket("/ws")
async def live_stream(websocket: WebSocket) -> None:
    """Live frames in, one JSON result per processed frame out; see the module docstring for the protocol."""
    app = websocket.app
    hub = LiveHub.of(app)
    metrics = app.state.metrics
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope))
    if getattr(app.state, "pipeline", None) is None:
        await websocket.send_text(LiveError(error="the model is not loaded yet; try again shortly").model_dump_json())
        await websocket.close(CLOSE_INTERNAL_ERROR, "model not loaded")
        return
    if hub.draining:
        metrics.ws_connections.labels(outcome="draining").inc()
        await websocket.send_text(LiveError(error="this server is shutting down; reconnect").model_dump_json())
        await websocket.close(CLOSE_GOING_AWAY, "server going away, reconnect")
        return
    if hub.active >= hub.max_connections:
        # Accept first so a browser gets a readable message and close reason rather than a failed handshake.
        hub.rejected += 1
        metrics.ws_connections.labels(outcome="rejected").inc()
        await websocket.send_text(
            LiveError(
                error=f"server busy: {hub.max_connections} live connections are open; try again later"
            ).model_dump_json()
        )
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "server busy, try again later")
        return
    hub.active += 1
    metrics.ws_connections.labels(outcome="accepted").inc()
    metrics.ws_active.inc()
    session = LiveSession(websocket, hub)
    hub.sessions.add(session)
    try:
        await session.run()
    except WebSocketDisconnect:
        pass
    finally:
        hub.active -= 1
        hub.sessions.discard(session)
        metrics.ws_active.dec()
