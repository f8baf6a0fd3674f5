"""A bounded fuzz run against a real uvicorn on loopback: mutated images, videos, multipart bodies and WebSocket
messages (about 2,350 in all). No answer may be a 5xx, no WebSocket may die without a close code, and the server
must still answer /healthz at the end. Deterministic (``derandomize``): the same cases every run, so CI is stable;
``EMOTION_FUZZ_SCALE=10`` runs ten times as many (new ones too), and ``benchmarks/soak.py`` runs for as long as asked.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest
from conftest import LiveServer, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from videos import write_video
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from y4m import astronaut_frame

SCALE = float(os.environ.get("EMOTION_FUZZ_SCALE", "1"))
FRAME_LIMIT = 64 * 1024


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        derandomize=SCALE == 1,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def encoded(ext: str, width: int = 64, height: int = 48) -> bytes:
    bgr = cv2.cvtColor(astronaut_frame(width, height), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return buf.tobytes()


IMAGE_SEEDS = [encoded(ext) for ext in (".jpg", ".png", ".webp", ".bmp")] + [encoded(".png", 1, 1)]


@pytest.fixture(scope="module")
def video_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("fuzz-videos")
    frames = [cv2.cvtColor(astronaut_frame(96, 72), cv2.COLOR_RGB2BGR)] * 10
    return [write_video(folder / f"seed{ext}", frames, fps=10).read_bytes() for ext in (".avi", ".mp4")]


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    # Small limits, so that mutations reach them.
    settings_ = make_settings(model_path, "haar", max_upload_bytes=200_000, ws_max_frame_bytes=FRAME_LIMIT)
    with LiveServer(create_app(settings_)) as live:
        yield live
        assert httpx.get(f"{live.url}/healthz").status_code == 200


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
    # Still alive and still right after everything the fuzzers sent.
    r = httpx.post(
        f"{server.url}/predict", content=encoded(".jpg", 320, 240), headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with 1-4 mutations; positions favour the header, where the parsers' decisions are."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        n = len(data)
        pos = draw(st.one_of(st.integers(0, min(63, n - 1)), st.integers(0, n - 1)))
        kind = draw(st.sampled_from(["flip", "byte", "int", "truncate", "insert", "delete", "repeat"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "int":  # a length or size field set to something extreme
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20, 1 << 24]))
            width = draw(st.sampled_from([2, 3, 4]))
            data[pos : pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(
                width, draw(st.sampled_from(["little", "big"]))
            )
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            chunk = bytes(data[pos : pos + draw(st.integers(1, 256))])
            data[pos:pos] = chunk * draw(st.integers(1, 8))
    return bytes(data)


CONTENT_TYPES = ["image/jpeg", "image/png", "image/webp", "application/octet-stream", "text/plain", "", "image/"]


@fuzz_settings(1000)
@given(data=mutated(IMAGE_SEEDS), content_type=st.sampled_from(CONTENT_TYPES), as_form=st.booleans())
def test_mutated_images(client: httpx.Client, data: bytes, content_type: str, as_form: bool) -> None:
    if as_form:
        r = client.post("/predict", files={"file": ("x", data, content_type or "application/octet-stream")})
    else:
        r = client.post("/predict", content=data, headers={"content-type": content_type})
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "detail" in r.json()


EVERY = st.one_of(st.sampled_from(["0.1", "1", "600", "0", "-1", "nan", "inf", "1e309", "x"]), st.floats(0.05, 700))


@fuzz_settings(150)
@given(data=st.data(), every=EVERY, fmt=st.sampled_from(["json", "ndjson", "xml"]))
def test_mutated_videos(
    client: httpx.Client, video_seeds: list[bytes], data: st.DataObject, every: object, fmt: str
) -> None:
    video = data.draw(mutated(video_seeds))
    r = client.post("/predict/video", params={"every": every, "format": fmt}, files={"file": ("v", video, "video/mp4")})
    assert r.status_code < 500, r.text
    if fmt == "ndjson" and r.status_code == 200:  # a late problem is a last line with a 4xx status
        last = json.loads(r.text.strip().splitlines()[-1])
        assert last.get("status_code", 200) < 500, last


BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.one_of(st.text(BCHARS, min_size=1, max_size=80), st.text(BCHARS, min_size=200, max_size=400)))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["file", "file", "junk", "", 'fi"le', "ﬁle"]))
        headers = f'Content-Disposition: form-data; name="{name}"; filename="a"\r\n'
        if draw(st.booleans()):
            headers += f"Content-Type: {draw(st.sampled_from(CONTENT_TYPES + ['video/mp4', 'x' * 300]))}\r\n"
        if draw(st.booleans()):
            headers += draw(st.text(min_size=0, max_size=100)).replace("\r", "") + "\r\n"
        body = draw(st.one_of(st.sampled_from(IMAGE_SEEDS), st.binary(max_size=2000)))
        parts.append(f"--{boundary}\r\n{headers}\r\n".encode(errors="surrogateescape") + body + b"\r\n")
    raw = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    if raw and draw(st.booleans()):
        raw = draw(mutated([raw]))
    quoted = draw(st.sampled_from(['boundary="{}"', "boundary={}", "boundary=", "charset=utf-8"]))
    return raw, "multipart/form-data; " + quoted.format(boundary)


@fuzz_settings(500)
@given(body=multipart_bodies(), route=st.sampled_from(["/predict", "/predict", "/predict/video"]))
def test_mutated_multipart_bodies(client: httpx.Client, body: tuple[bytes, str], route: str) -> None:
    raw, content_type = body
    try:
        headers = {"content-type": content_type.encode("utf-8").decode("latin-1")}
    except UnicodeError:
        return
    r = client.post(route, content=raw, headers=headers)
    assert r.status_code < 500, r.text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
TEXT_MESSAGES = st.one_of(
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["type", "max_faces", "x"]), JSON_VALUES, max_size=3)),
    st.builds(json.dumps, JSON_VALUES),
    st.text(max_size=200),
    st.sampled_from(['{"type": "ping"}', "[" * 5000, "{" * 999, '{"max_faces": 1e999}', "\u0000", "\ud7ff" * 300]),
)


class LiveSocket:
    """One WebSocket for many examples, reopened when a message legitimately closed it (an oversize frame)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws = self.open()

    def open(self) -> ClientConnection:
        return connect(self.url, max_size=None).__enter__()

    def reopen(self) -> None:
        self.ws.close()
        self.ws = self.open()


@pytest.fixture(scope="module")
def live_ws(server: LiveServer) -> Iterator[LiveSocket]:
    live = LiveSocket(server.url.replace("http://", "ws://") + "/ws")
    yield live
    live.ws.close()


OVERSIZE = st.just(b"\xff" * (FRAME_LIMIT + 2))


@fuzz_settings(700)
@given(message=st.one_of(TEXT_MESSAGES, mutated(IMAGE_SEEDS), st.binary(max_size=300), OVERSIZE))
def test_websocket_messages(live_ws: LiveSocket, message: str | bytes) -> None:
    live_ws.ws.send(message)
    try:
        reply = json.loads(live_ws.ws.recv(timeout=30))
    except ConnectionClosed as closed:  # only an oversize frame may end the connection, and with 1009
        assert isinstance(message, bytes) and len(message) > FRAME_LIMIT, closed
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        live_ws.reopen()
        return
    assert reply["type"] in {"result", "error", "ack", "pong"}, reply
    assert "internal" not in reply.get("error", ""), reply
    if isinstance(message, bytes) and len(message) > FRAME_LIMIT:  # the message comes first, then the close
        with pytest.raises(ConnectionClosed):
            live_ws.ws.recv(timeout=30)
        live_ws.reopen()
