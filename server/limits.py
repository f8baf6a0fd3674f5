"""Deadlines for reading a request, and the uvicorn options that carry the service's connection limits.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), caps open connections (``limit_concurrency``,
503 past it) and WebSocket messages (``ws_max_size``), but it has no deadline for reading a request: a client that
sends its headers or its body a byte at a time holds a connection, and a task, forever. Nor does it cap the headers
with httptools, its faster parser (only h11 has a limit, 16 KiB). Two small pieces add those deadlines:

- ``HeaderDeadline``: uvicorn's own HTTP protocol with one timer, armed when a connection opens and again after each
  answer. If it fires while no request is being served, the client has not finished the next request's headers
  in time: it gets 408 (or, having sent nothing, just the close). A request whose headers pass ``MAX_HEADER_BYTES``
  gets 431 and the close.
- ``BodyDeadlineMiddleware``: the request's ASGI ``receive()`` with a deadline for the whole body and a shorter one
  for each chunk. Past either, the route's read raises ``BodyTimeout`` and the client gets 408 with
  ``Connection: close``. After the last chunk ``receive()`` is left alone (it then waits for a disconnect).

``HeaderDeadline`` also answers uvicorn's connection limit (``limit_concurrency``) itself: a JSON 503 with
``Retry-After``, like the work queue's, instead of uvicorn's plain-text 503 without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from server.config import Settings


def json_response(status: bytes, body: bytes, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 answer written straight to the transport (before or outside the app), then closed.

    ``default_headers``: uvicorn's ``server_state.default_headers``, the ``date`` (renewed each second) and ``server``
    headers its config asks for, which every answer through the app carries first; a constant answer built once
    would carry a date frozen at the time it was built."""
    head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in default_headers)
    return b"HTTP/1.1 %s\r\n%scontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        head,
        len(body),
        body,
    )


BUSY_BODY = b'{"detail":"server busy: too many connections; retry later"}'
REQUEST_TIMEOUT_BODY = b'{"detail":"request headers not received in time"}'
MAX_HEADER_BYTES = 64 * 1024  # request line and headers; browsers send a few kB, nginx allows 32 kB by default
HEADERS_TOO_LARGE_BODY = b'{"detail":"request headers over %d bytes"}' % MAX_HEADER_BYTES


class HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol class: the next request's headers must be complete within
    ``header_timeout`` seconds of the connection opening or of the previous answer. A request past uvicorn's
    ``limit_concurrency`` gets 503 ``{"detail": ...}`` with ``Retry-After: retry_after``."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any  # uvicorn's RequestResponseCycle of the request served last (None before the first)
    server_state: Any  # uvicorn's ServerState, shared by all its protocol objects: default_headers, connections...

    connections: set[Any]  # uvicorn's open connections and request tasks, shared by all its protocol objects
    tasks: set[asyncio.Task]
    limit_concurrency: int | None
    app: Any
    logger: logging.Logger

    def __init__(self, *args: Any, header_timeout: float, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.retry_after = retry_after
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_since_armed = 0
        self._header_bytes: int | None = None  # bytes since the request began, until its headers are complete
        # uvicorn's own check answers plain text without Retry-After: the limit is checked in _admit instead.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self.app = partial(self._admit, self.app)

    async def _admit(self, app: Any, scope: dict, receive: Callable, send: Callable) -> None:
        """uvicorn's ``limit_concurrency`` test, in the request's task (which ``self.tasks`` already holds), with the
        asking connection counted as one of the limit: uvicorn's own test (``>=``) served at most limit - 1."""
        limit = self.max_connections
        if limit is not None and (len(self.connections) > limit or len(self.tasks) > limit):
            self.logger.warning("Exceeded concurrency limit.")
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BUSY_BODY)).encode()),
                (b"retry-after", str(self.retry_after).encode()),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": BUSY_BODY})
            return
        await app(scope, receive, send)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed += len(data)
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._answer_and_close(b"431 Request Header Fields Too Large", HEADERS_TOO_LARGE_BODY)
                return
        super().data_received(data)  # type: ignore[misc]

    # httptools' parser callbacks (h11 never calls them: it has its own limit). httptools keeps a header it has not
    # seen the end of in memory whatever its size, so the bytes of each request's headers are counted here.
    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        super().on_headers_complete()  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._cancel_header_deadline()  # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse (an unknown method, a malformed header, a body framed both
        by Content-Length and chunked), in JSON like every other error; uvicorn's own was plain text."""
        body = json.dumps({"detail": f"malformed HTTP request ({msg.rstrip('.')})"}).encode()
        self._answer_and_close(b"400 Bad Request", body)

    def _answer_and_close(self, status: bytes, body: bytes) -> None:
        self.transport.write(json_response(status, body, self.server_state.default_headers))
        self.transport.close()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._bytes_since_armed = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closed already, or a request is being served: its headers were complete in time
        if self._bytes_since_armed:
            self._answer_and_close(b"408 Request Timeout", REQUEST_TIMEOUT_BODY)
        else:
            self.transport.close()


class HeaderDeadlineH11Protocol(HeaderDeadline, H11Protocol):
    pass


try:  # uvicorn[standard] brings httptools, the faster parser uvicorn picks when it is there
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
        pass

    DEFAULT_PROTOCOL: type = HeaderDeadlineHttpToolsProtocol
except ImportError:  # pragma: no cover
    DEFAULT_PROTOCOL = HeaderDeadlineH11Protocol


# Seconds a finished WebSocket connection may take to hand its last bytes to a client before it is cut off.
UNREAD_CLOSE_GRACE_S = 5.0


class WebSocketBackpressure:
    """uvicorn's WebSocket protocol that stops reading while its answers cannot be written.

    The protocol answers each ping with a pong written straight to the transport, reading on while the client
    takes nothing: a client that floods pings and never reads grew the server's write buffer as fast as it could
    send (300 MB of pings, +285 MB of memory). Here reading pauses when the transport's buffer passes its high-water
    mark, and resumes when it drains (and the app is not holding reading paused for its own queue). A connection
    whose app is done but whose client still takes nothing is cut off after ``UNREAD_CLOSE_GRACE_S``.
    """

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self.transport.pause_reading()  # type: ignore[attr-defined]

    # read_paused and writable are uvicorn's own state (0.35-0.55); read with getattr so that a uvicorn without them
    # loses the back-pressure, not its WebSockets.
    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if not getattr(self, "read_paused", False):
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def _hold_reading_while_unwritable(self) -> None:
        writable = getattr(self, "writable", None)
        if writable is not None and not writable.is_set():
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._hold_reading_while_unwritable()

    async def run_asgi(self) -> None:
        await super().run_asgi()  # type: ignore[misc]
        # The app is done and uvicorn has closed the transport, which waits for the write buffer to drain: a client
        # that reads nothing would keep the connection, and its buffer, forever.
        if self.transport.get_write_buffer_size():  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(UNREAD_CLOSE_GRACE_S, self._abort_if_unread)

    def _abort_if_unread(self) -> None:
        if self.transport.get_write_buffer_size():  # type: ignore[attr-defined]
            self.transport.abort()  # type: ignore[attr-defined]

    async def receive(self) -> Any:
        # uvicorn resumes reading whenever the app empties its queue; binary messages among the pings (which the
        # app reads at once, answering nothing) would otherwise reopen the flood each time.
        message = await super().receive()  # type: ignore[misc]
        self._hold_reading_while_unwritable()
        return message


try:  # the implementation uvicorn picks when the websockets package is there (uvicorn >= 0.35)
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class BackpressureWebSocketProtocol(WebSocketBackpressure, WebSocketsSansIOProtocol):
        pass

    WS_PROTOCOL: type | str = BackpressureWebSocketProtocol
except ImportError:  # pragma: no cover
    WS_PROTOCOL = "auto"


class BodyTimeout(Exception):
    """The request body did not arrive in time (answered 408, connection closed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BodyDeadlineMiddleware:
    """Deadlines on reading an HTTP request body: ``total`` seconds for all of it, ``idle`` between chunks."""

    def __init__(self, app: Any, *, total: float, idle: float) -> None:
        self.app = app
        self.total = total
        self.idle = idle

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total
        body_done = False

        async def receive_with_deadline() -> dict:
            nonlocal body_done
            if body_done:
                return await receive()
            left = deadline - loop.time()
            wait = min(self.idle, left)
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                what = f"the whole body within {self.total:g} s" if left <= self.idle else f"a chunk in {self.idle:g} s"
                raise BodyTimeout(f"request body too slow: expected {what}") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, receive_with_deadline, send)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that apply the settings' connection limits."""
    return {
        "http": partial(DEFAULT_PROTOCOL, header_timeout=settings.header_timeout, retry_after=settings.retry_after),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        # uvicorn buffers a whole WebSocket message before the app sees it. Up to twice the frame limit the app
        # answers an oversize frame itself (an error message, then close 1009); a bigger one is cut off while it
        # arrives by the WebSocket library (close 1009, the reason names the limit), so memory stays bounded.
        "ws_max_size": 2 * settings.ws_max_frame_bytes,
        "ws": WS_PROTOCOL,
    }
