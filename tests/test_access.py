"""Access control against a real uvicorn on loopback: API key (HTTP headers, WebSocket subprotocol), the WebSocket
Origin check, CORS and trusted hosts. The page with each of them: tests/test_browser.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, make_settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from y4m import astronaut_frame, jpeg

KEY = "test-key_0123456789"


@pytest.fixture(scope="module")
def frame() -> bytes:
    return jpeg(astronaut_frame(320, 240))


@pytest.fixture(scope="module")
def keyed(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    with LiveServer(create_app(make_settings(model_path, "haar", api_key=KEY))) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(live_server: LiveServer) -> LiveServer:
    return live_server


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def assert_refused(ws, words: str) -> None:  # type: ignore[no-untyped-def]
    error = json.loads(ws.recv(timeout=10))
    assert error["type"] == "error" and words in error["error"], error
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_api_key_guards_the_work_routes(keyed: LiveServer, frame: bytes) -> None:
    image = {"content": frame, "headers": {"content-type": "image/jpeg"}}
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for route in ("/predict", "/predict/video"):
            r = client.post(route, **image)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", route
            assert "API key" in r.json()["detail"]
        assert client.get("/metrics").status_code == 401
        wrong = client.post("/predict", content=frame, headers={"content-type": "image/jpeg", "x-api-key": "nope"})
        assert wrong.status_code == 401
        r = client.post("/predict", content=frame, headers={"content-type": "image/jpeg", "x-api-key": KEY})
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        bearer = {"content-type": "image/jpeg", "authorization": f"Bearer {KEY}"}
        assert client.post("/predict", content=frame, headers=bearer).status_code == 200
        assert client.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
        # The page, its files, probes, model metadata and the API docs stay open.
        for route in ("/", "/app.js", "/healthz", "/readyz", "/model", "/docs", "/openapi.json"):
            assert client.get(route).status_code == 200, route


def test_api_key_on_the_websocket(keyed: LiveServer, frame: bytes) -> None:
    with connect(ws_url(keyed)) as ws:
        assert_refused(ws, "API key")
    with connect(ws_url(keyed), subprotocols=["emotion", "key.wrong-key-123"]) as ws:
        assert_refused(ws, "API key")
    # What a browser does: the key as a subprotocol; the server picks "emotion" and never echoes the key.
    with connect(ws_url(keyed), subprotocols=["emotion", f"key.{KEY}"]) as ws:
        assert ws.subprotocol == "emotion"
        ws.send(frame)
        assert json.loads(ws.recv(timeout=20))["type"] == "result"
    with connect(ws_url(keyed), additional_headers={"X-API-Key": KEY}) as ws:  # scripts may use the header
        ws.send(frame)
        assert json.loads(ws.recv(timeout=20))["type"] == "result"


def test_websocket_origin_is_same_origin_by_default(open_server: LiveServer, frame: bytes) -> None:
    with connect(ws_url(open_server), origin="http://evil.example") as ws:
        assert_refused(ws, "origin")
    host = open_server.url.removeprefix("http://")
    with connect(ws_url(open_server), origin=f"http://{host}") as ws:
        ws.send(frame)
        assert json.loads(ws.recv(timeout=20))["type"] == "result"
    with connect(ws_url(open_server)) as ws:  # no Origin: not a browser
        ws.send(frame)
        assert json.loads(ws.recv(timeout=20))["type"] == "result"


def test_cors_is_off_by_default(open_server: LiveServer) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    r = httpx.options(f"{open_server.url}/predict", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{open_server.url}/model", headers={"origin": "https://app.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_allowed_origins_get_cors_and_the_websocket(model_path: Path, frame: bytes) -> None:
    from server.app import create_app

    settings = make_settings(model_path, "haar", allowed_origins="https://app.example", api_key=KEY)
    assert settings.allowed_origins == ["https://app.example"]
    with LiveServer(create_app(settings)) as server:
        preflight = {
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key",
        }
        r = httpx.options(f"{server.url}/predict", headers=preflight)  # no key needed for a preflight
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
        other = httpx.options(f"{server.url}/predict", headers={**preflight, "origin": "https://other.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        headers = {"origin": "https://app.example", "content-type": "image/jpeg"}
        refused = httpx.post(f"{server.url}/predict", content=frame, headers=headers)
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.post(f"{server.url}/predict", content=frame, headers={**headers, "x-api-key": KEY})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        with connect(ws_url(server), origin="https://app.example", subprotocols=["emotion", f"key.{KEY}"]) as ws:
            ws.send(frame)
            assert json.loads(ws.recv(timeout=20))["type"] == "result"
        with connect(ws_url(server), origin="https://other.example", subprotocols=["emotion", f"key.{KEY}"]) as ws:
            assert_refused(ws, "origin")


def test_trusted_hosts(model_path: Path) -> None:
    from server.app import create_app

    with LiveServer(create_app(make_settings(model_path, "haar", trusted_hosts="127.0.0.1,localhost"))) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        r = httpx.get(f"{server.url}/healthz", headers={"host": "evil.example"})
        assert r.status_code == 400
        handshake = (
            b"GET /ws HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(handshake)
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        with connect(ws_url(server)) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


def test_api_key_setting_is_validated(model_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="API key"):
        make_settings(model_path, "haar", api_key="has space in it")
    assert make_settings(model_path, "haar", api_key="").api_key is None
    assert KEY not in repr(make_settings(model_path, "haar", api_key=KEY))


def test_a_root_path_prefix_does_not_slip_past_the_key(model_path: Path, frame: bytes) -> None:
    """Behind a proxy that serves the service under a prefix and strips it (uvicorn --root-path /api), uvicorn puts
    the prefix back in front of every path it hands the app; the key check and the page mount's answers must see
    the path the app routes on, not that one."""
    from server.app import create_app

    app = create_app(make_settings(model_path, "haar", api_key=KEY))
    with LiveServer(app, root_path="/api") as server, httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/predict", content=frame, headers={"content-type": "image/jpeg"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200  # the probes stay open
        keyed = client.post("/predict", content=frame, headers={"content-type": "image/jpeg", "x-api-key": KEY})
        assert keyed.status_code == 200 and keyed.json()["faces"]
        assert client.get("/ws", headers={"x-api-key": KEY}).status_code == 426
        assert client.put("/model", headers={"x-api-key": KEY}).headers["allow"] == "GET, HEAD"
        with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            assert_refused(ws, "API key")
