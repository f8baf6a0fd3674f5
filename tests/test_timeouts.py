"""Deadlines against a real uvicorn on loopback: slow headers and bodies, idle keep-alive, idle and old WebSockets."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, make_settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

HEADER_TIMEOUT = 0.6
BODY_IDLE = 0.6
BODY_TOTAL = 1.5
KEEP_ALIVE = 0.4
WS_IDLE = 0.8


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    settings = make_settings(
        model_path,
        "haar",
        header_timeout=HEADER_TIMEOUT,
        body_idle_timeout=BODY_IDLE,
        body_timeout=BODY_TOTAL,
        keep_alive_timeout=KEEP_ALIVE,
        ws_idle_timeout=WS_IDLE,
        ws_max_age=3.0,
    )
    with LiveServer(create_app(settings)) as live:
        yield live


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when (seconds from now) it closed."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def dribble(sock: socket.socket, data: bytes, interval: float, until: float) -> float:
    """Send ``data`` a byte every ``interval`` s until the server closes or ``until`` s pass; seconds it lasted."""
    start = time.monotonic()
    for byte in data:
        if time.monotonic() - start > until:
            break
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(interval)
    return time.monotonic() - start


def test_silent_connection_is_closed(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        data, after = read_until_closed(sock)
    assert data == b"" and HEADER_TIMEOUT * 0.8 < after < HEADER_TIMEOUT + 2


def test_slowloris_headers_get_408_and_the_close(server: LiveServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        lasted = dribble(sock, request, 0.05, until=5.0)  # would take 11 s to finish
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert lasted < HEADER_TIMEOUT + 2
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_stalled_body_gets_408(server: LiveServer) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b"\xff\xd8" + bytes(1000))
        data, after = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert b"connection: close" in data.lower() and b"in 0.6 s" in data
    assert BODY_IDLE * 0.8 < after < BODY_IDLE + 2


def test_dribbled_body_hits_the_total_deadline(server: LiveServer) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        lasted = dribble(sock, bytes(1000), 0.1, until=8.0)  # each pause is under the idle deadline
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"whole body" in data, data[:300]
    assert lasted < BODY_TOTAL + 2


def test_idle_keep_alive_connection_is_closed(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data, after = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and after < KEEP_ALIVE + 2


def test_keep_alive_connection_serves_requests_in_time(server: LiveServer) -> None:
    # The header deadline is per request: a client that keeps asking within it is served every time.
    with httpx.Client(base_url=server.url) as client:
        for _ in range(6):
            assert client.get("/healthz").status_code == 200
            time.sleep(KEEP_ALIVE / 3)


def answer_headers(answer: bytes) -> dict[str, str]:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    return {name.lower(): value for name, _, value in (line.partition(": ") for line in head.split("\r\n")[1:])}


def normal_answer(port: int) -> dict[str, str]:
    """The headers of an answer through the app (GET /healthz)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer, _ = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return answer_headers(answer)


def normal_answer_of_a_new_second(port: int) -> dict[str, str]:
    """A normal answer's headers once the server's Date has turned to the next second (about a second)."""
    first = normal_answer(port)["date"]
    deadline = time.monotonic() + 5
    while (headers := normal_answer(port))["date"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    return headers


def http_date(value: str) -> float:
    """Seconds since the epoch of an IMF-fixdate (RFC 9110 5.6.7), the one form a server may send."""
    return datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc).timestamp()


def slow_headers(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        return read_until_closed(sock)[0]


def endless_headers(port: int) -> bytes:
    from test_hostile_input import send_until_answered

    return send_until_answered(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 16384, 1_000_000)[0]


def unknown_method(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_until_closed(sock)[0]


@pytest.mark.parametrize(
    "status, ask", [(408, slow_headers), (431, endless_headers), (400, unknown_method)], ids=["408", "431", "400"]
)
def test_answers_written_before_the_app_carry_the_same_standard_headers(
    server: LiveServer, status: int, ask: Callable[[int], bytes]
) -> None:
    # These answers are written straight to the connection, not through the app: they carried no Date and no Server.
    before = normal_answer_of_a_new_second(server.port)  # a date frozen before this second falls before it
    answer = ask(server.port)
    after = normal_answer(server.port)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    headers = answer_headers(answer)
    assert headers.get("server") == before.get("server") == "uvicorn", (headers, before)
    date = http_date(headers["date"])  # KeyError: no Date; ValueError: not an HTTP-date
    assert http_date(before["date"]) <= date <= http_date(after["date"]), (before["date"], headers["date"])
    assert abs(date - time.time()) < 3, headers["date"]  # uvicorn renews its date each second


def test_raw_answers_follow_uvicorns_header_options(model_path: Path) -> None:
    from server.app import create_app

    app = create_app(make_settings(model_path, "haar"))
    with LiveServer(app, server_header=False, date_header=False) as quiet:
        normal = normal_answer(quiet.port)
        headers = answer_headers(unknown_method(quiet.port))
    assert "server" not in normal and "date" not in normal, normal
    assert "server" not in headers and "date" not in headers, headers


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def test_idle_websocket_is_closed_with_a_reason(server: LiveServer) -> None:
    # The client library answers the server's pings by itself: an idle but live client is still closed.
    with connect(ws_url(server)) as ws:
        start = time.monotonic()
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "without a message" in error["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert WS_IDLE * 0.8 < time.monotonic() - start < WS_IDLE + 2


def test_busy_websocket_is_closed_at_its_maximum_age(server: LiveServer) -> None:
    replies = 0
    with connect(ws_url(server)) as ws:
        start = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() - start < 10:
                ws.send(json.dumps({"type": "ping"}))  # every 0.3 s: never idle
                message = json.loads(ws.recv(timeout=10))
                if message["type"] == "error":
                    assert "maximum age" in message["error"]
                    ws.recv(timeout=10)
                replies += message["type"] == "pong"
                time.sleep(0.3)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert replies >= 5 and 2.5 < time.monotonic() - start < 5


def test_websocket_client_that_reads_nothing_gives_its_slot_back(
    server: LiveServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that sends but never reads: once the socket buffers are full the server's next answer (or its close
    # frame) waits for room that never comes. Without a deadline on that send the session, and one of the live
    # connection slots, were held forever, past the idle timeout and the maximum age; and once the session was over,
    # uvicorn's close of the connection waited for the client to read, so the connection and its buffer stayed.
    from test_hostile_input import flood_pings, unread_websocket

    from server import limits
    from server.live import LiveHub

    monkeypatch.setattr(limits, "UNREAD_CLOSE_GRACE_S", 1.0)
    caplog.set_level(logging.INFO, logger="server.live")
    hub = LiveHub.of(server.app)

    def websockets() -> int:
        return sum(isinstance(c, limits.WebSocketBackpressure) for c in server.server.server_state.connections)

    with contextlib.closing(unread_websocket(server.port)) as sock:
        flood_pings(sock, limit=48_000_000)  # the pongs fill the buffers (the server then stops reading)
        start = time.monotonic()
        while hub.active and time.monotonic() - start < 8:
            time.sleep(0.1)
        assert hub.active == 0, "the session of a client that reads nothing is still open"
        assert "client read no answer" in caplog.text, caplog.text
        while websockets() and time.monotonic() - start < 2 * WS_IDLE + 4:
            time.sleep(0.1)
        assert websockets() == 0, "the connection of a client that reads nothing outlived its session"
    assert time.monotonic() - start < 2 * WS_IDLE + 4
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
