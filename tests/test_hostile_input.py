"""Regression tests for the input defects of issue 10, each against a real uvicorn on loopback.

Decoder failures, long multipart boundaries, whole-body caps, empty forms, hostile WebSocket messages, oversize frames
and what error bodies and metadata routes reveal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import LiveServer, make_settings
from videos import face_then_no_face, gray_jpeg, mjpeg_avi
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from y4m import astronaut_frame, jpeg

MAX_UPLOAD = 50_000
MAX_FRAME = 64 * 1024


def bmp_header(width: int, height: int) -> bytes:
    """A 54-byte BMP (file header + BITMAPINFOHEADER, 24 bit) with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def webp_vp8x(width: int, height: int) -> bytes:
    """A WebP with only an extended (VP8X) header declaring a ``width`` x ``height`` canvas."""
    chunk = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little")
    chunk += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# Sides over OpenCV's 2^20 limit with a total under the pixel limit: cv2.imdecode raises instead of returning None.
OPENCV_REFUSES = {"bmp 1048577x1": bmp_header(1048577, 1), "webp 1x16777216": webp_vp8x(1, 16777216)}


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    settings = make_settings(
        model_path, "haar", max_upload_bytes=MAX_UPLOAD, ws_max_frame_bytes=MAX_FRAME, max_video_seconds=2.0
    )
    app = create_app(settings)

    async def broken_route() -> dict:  # a route with a bug, to see what a 500 tells the client
        raise RuntimeError(f"secret detail from {Path.cwd()}")

    app.add_api_route("/broken", broken_route)
    app.router.routes.insert(0, app.router.routes.pop())  # before the page's mount at "/", which matches everything
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


@pytest.mark.parametrize("name", list(OPENCV_REFUSES))
def test_decoder_refusals_are_400(client: httpx.Client, server: LiveServer, name: str) -> None:
    data = OPENCV_REFUSES[name]
    r = client.post("/predict", content=data, headers={"content-type": f"image/{name.split()[0]}"})
    assert r.status_code == 400, r.text
    assert "could not decode" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("x", data, "application/octet-stream")})
    assert r.status_code == 400, r.text
    with connect(ws_url(server)) as ws:
        ws.send(data)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["frame_id"] == 1 and "could not decode" in error["error"]
        ws.send(jpeg(astronaut_frame(320, 240)))
        assert json.loads(ws.recv(timeout=20))["type"] == "result"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, image_data: bytes, interlaced: bool = False, extra: bytes = b"") -> bytes:
    """An 8-bit RGB PNG whose IDAT holds ``image_data`` (the filtered rows), compressed; ``extra`` chunks before it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    idat = png_chunk(b"IDAT", zlib.compress(image_data, 9))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra + idat + png_chunk(b"IEND", b"")


def test_png_with_image_data_past_its_rows_is_400_not_inflated(client: httpx.Client, server: LiveServer) -> None:
    """An 8x8 PNG whose image data inflates to 40 MB (a 40 kB file) was answered 200 after libpng inflated all of it:
    zeros compress 1000:1, and a 10 MB file held a thread for 20 s (40 s at the default 20 MB limit)."""
    bomb = png(8, 8, bytes(40_000_000))
    assert len(bomb) < MAX_UPLOAD
    r = client.post("/predict", content=bomb, headers={"content-type": "image/png"})
    assert r.status_code == 400, r.text
    assert "more image data than its 8x8 pixels need" in r.json()["detail"]
    with connect(ws_url(server)) as ws:
        ws.send(bomb)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "more image data" in error["error"]
    # Exactly the rows, plain or interlaced (Adam7: 7 passes of 1 + 3 * width bytes per row, here 1+1+1+2+2+4+4 rows
    # of 4, 4, 8, 8, 16, 16, 32 pixels): decoded as before.
    r = client.post("/predict", content=png(32, 8, bytes(8 * 97)), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["width"] == 32
    adam7 = bytes((1 + 12) + (1 + 12) + (1 + 24) + 2 * (1 + 24) + 2 * (1 + 48) + 4 * (1 + 48) + 4 * (1 + 96))
    r = client.post("/predict", content=png(32, 8, adam7, interlaced=True), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["height"] == 8


def test_png_of_too_many_chunks_is_400(live_server: LiveServer) -> None:
    """libpng warns once per chunk it cannot use: 20 MB of empty tEXt chunks (1.7 million) took 7 s and wrote as many
    log lines, and the image-data check walked them for 1.4 s more."""
    r = httpx.post(
        f"{live_server.url}/predict",
        content=png(8, 8, bytes(8 * 25), extra=png_chunk(b"tEXt", b"") * 70_000),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "could not decode the image: the PNG has more than 65536 chunks"


def test_jpeg_of_too_many_segments_before_its_frame_header_is_400(client: httpx.Client) -> None:
    """The header walk that sizes a JPEG ran in Python over every segment before the frame header: 20 MB of 4-byte
    comments took 2.3 s (libjpeg skips them in 0.04 s). Real JPEGs have a few dozen; past 4096 it is refused."""
    plain = jpeg(astronaut_frame(64, 48))
    r = client.post(
        "/predict", content=plain[:2] + b"\xff\xfe\x00\x02" * 100 + plain[2:], headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/predict", content=plain[:2] + b"\xff\xfe\x00\x02" * 5000 + plain[2:], headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 400 and "could not decode" in r.json()["detail"], r.text


def test_jpeg_of_too_many_scans_is_400_not_decoded(client: httpx.Client, server: LiveServer) -> None:
    """Each scan of a progressive JPEG is a pass over the whole image and can be 14 bytes long: 300 copies of the last
    scan of a 2000x2000 JPEG (28 kB) took 0.8 s to decode, 1000 on 6000x6000 (200 kB) 46 s; 20 MB of them, hours."""
    image = cv2.imencode(".jpg", np.full((2000, 2000, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    progressive = image.tobytes()
    last_scan = progressive[progressive.rindex(b"\xff\xda") : -2]  # up to the end-of-image marker
    bomb = progressive[:-2] + last_scan * 300 + b"\xff\xd9"
    assert len(bomb) < MAX_UPLOAD
    r = client.post("/predict", content=bomb, headers={"content-type": "image/jpeg"})
    assert r.status_code == 400, r.text
    assert "the JPEG has 310 scans, over the limit of 100" in r.json()["detail"]
    with connect(ws_url(server)) as ws:
        ws.send(bomb)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "310 scans" in error["error"]
    r = client.post("/predict", content=progressive, headers={"content-type": "image/jpeg"})  # its own 10 scans
    assert r.status_code == 200 and r.json()["width"] == 2000


@pytest.mark.parametrize("route", ["/predict", "/predict/video"])
def test_boundary_over_the_parsers_limit_is_400(client: httpx.Client, route: str) -> None:
    boundary = "b" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nxx\r\n--{boundary}--\r\n'
    r = client.post(route, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400, r.text
    assert "multipart" in r.json()["detail"] and "oundary" in r.json()["detail"]


@pytest.mark.parametrize("route", ["/predict", "/predict/video"])
def test_multipart_body_of_many_tiny_parts_is_400(client: httpx.Client, route: str) -> None:
    from server.uploads import MAX_PARTS

    image = jpeg(astronaut_frame(64, 48))

    def form(fillers: int) -> bytes:
        filler = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n' * fillers
        return (
            filler
            + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n%s\r\n--b--\r\n' % image
        )

    headers = {"content-type": "multipart/form-data; boundary=b"}
    r = client.post(route, content=form(MAX_PARTS), headers=headers)  # the file is part MAX_PARTS + 1
    assert r.status_code == 400, r.text
    assert f"more than {MAX_PARTS} parts" in r.json()["detail"]
    if route == "/predict":  # up to the limit a form is read as before
        r = client.post(route, content=form(MAX_PARTS - 1), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["width"] == 64


@pytest.mark.parametrize("route", ["/predict", "/predict/video"])
def test_empty_multipart_body_is_400(client: httpx.Client, route: str) -> None:
    r = client.post(route, content=b"", headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400, r.text
    assert "empty" in r.json()["detail"]


def test_short_video_with_every_past_a_lowered_duration_limit(client: httpx.Client, tmp_path: Path) -> None:
    clip = face_then_no_face(tmp_path / "short.avi", 1, 0, fps=10, width=160, height=120)  # 1 s, limit 2 s
    r = client.post("/predict/video", params={"every": 5}, files={"file": ("short.avi", clip.read_bytes())})
    assert r.status_code == 200, r.text
    assert [frame["t"] for frame in r.json()["frames"]] == [0.0]
    long = face_then_no_face(tmp_path / "long.avi", 3, 0, fps=10, width=160, height=120)  # still refused
    r = client.post("/predict/video", params={"every": 5}, files={"file": ("long.avi", long.read_bytes())})
    assert r.status_code == 413


def test_video_frame_far_larger_than_its_header_is_413(client: httpx.Client, tmp_path: Path) -> None:
    # A 170 kB AVI whose header and first frame say 64x48 and whose second frame is a 7200x7200 JPEG (52 megapixels,
    # over the default limit of 40 with the decoder's slack): refused before it is decoded. It used to be decoded at
    # full size (+80 MB for this one; a frame of 40000x40000 would take gigabytes) and scaled down to 64x48.
    clip = mjpeg_avi(tmp_path / "liar.avi", [gray_jpeg(64, 48), gray_jpeg(7200, 7200), gray_jpeg(64, 48)], 64, 48)
    assert clip.stat().st_size < 1_000_000
    for fmt in ("json", "ndjson"):
        r = client.post(
            "/predict/video", params={"every": 0.1, "format": fmt}, files={"file": ("v.avi", clip.read_bytes())}
        )
        if fmt == "json":
            assert r.status_code == 413, r.text
            assert "over the limit of 40000000 pixels" in r.json()["detail"]
        else:  # the stream had started: its last line says why it stopped
            last = json.loads(r.text.strip().splitlines()[-1])
            assert r.status_code == 200 and last["status_code"] == 413 and "over the limit" in last["detail"], last


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n",  # an unknown method
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    ],
    ids=["unknown-method", "length-and-chunked", "space-in-header-name"],
)
def test_request_the_parser_refuses_gets_a_json_400(server: LiveServer, request_bytes: bytes) -> None:
    # uvicorn answers these before the app sees them; its answer was plain text, every other error here is JSON.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["detail"].startswith("malformed HTTP request"), body


def send_until_answered(port: int, head: bytes, chunk: bytes, most: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk`` repeatedly (at most ``most`` bytes) until the server answers; (answer, sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
                if b"\r\n\r\n" in answer:
                    break
            except BlockingIOError:
                pass
            if sent < most:
                try:
                    sent += sock.send(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.01)
            else:
                time.sleep(0.01)
        return answer, sent
    finally:
        sock.close()


def test_multipart_body_is_capped_as_a_whole(server: LiveServer) -> None:
    # A small file part, then an extra part that never ends (chunked, so no Content-Length to refuse up front).
    boundary = "cap"
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        f'xx\r\n--{boundary}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'
    ).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n" % (len(start), start)
    piece = b"z" * 16384
    answer, sent = send_until_answered(server.port, head, b"%x\r\n%s\r\n" % (len(piece), piece), 200_000_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # What was sent includes the kernel's socket buffers on both sides (a few MB on loopback), not the 200 MB.
    assert sent < 50_000_000, f"the server read {sent} bytes before refusing"


def test_hostile_control_messages_keep_the_connection(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        ws.send("[" * 100_000)
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "limit" in error["error"]
        ws.send("[" * 1000)  # under the length limit, still too deep for the JSON parser
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "JSON" in error["error"]
        ws.send(json.dumps({"k" * 100_000: 1}))  # (under uvicorn's message cap of twice the frame limit)
        reply = ws.recv(timeout=10)
        assert len(reply) < 300 and json.loads(reply)["type"] == "error"
        ws.send(json.dumps({"k" * 500: 1}))  # under the length limit: the key is shown cut short
        reply = json.loads(ws.recv(timeout=10))
        assert "unknown config keys" in reply["error"] and len(reply["error"]) < 200
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}

    caplog.set_level(logging.INFO)
    with connect(ws_url(server)) as ws:
        ws.send(b"\xff\xfe not utf-8", text=True)  # a text frame that is not UTF-8: the protocol says close 1007
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    time.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize("extra", [1, 2, 1000, MAX_FRAME])
def test_oversize_frame_gets_the_message_then_1009(server: LiveServer, extra: int) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(b"\xff\xd8" + bytes(MAX_FRAME + extra - 2))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "over the limit" in error["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_frame_over_twice_the_limit_is_cut_off_with_1009(server: LiveServer) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(bytes(2 * MAX_FRAME + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_errors_reveal_no_paths_or_exception_classes(client: httpx.Client, model_path: Path) -> None:
    r = client.get("/broken")
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    for route in ("/model", "/readyz", "/metrics"):
        text = client.get(route).text
        assert "/" + model_path.parent.name + "/" not in text and str(Path.cwd()) not in text, route
    assert client.get("/model").json()["path"] == model_path.name


@pytest.mark.parametrize("origin", ["http://[::1", "http://[evil.example"])
def test_unparseable_origin_is_refused_not_a_500(server: LiveServer, origin: str) -> None:
    with connect(ws_url(server), origin=origin) as ws:
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "origin" in error["error"], error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_endless_request_headers_get_431(server: LiveServer) -> None:
    # One header that never ends: httptools (uvicorn's parser here) buffers it without a size limit.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    answer, sent = send_until_answered(server.port, head, b"a" * 16384, 200_000_000)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"detail"' in answer and sent < 50_000_000, f"the server read {sent} bytes before refusing"
    cookies = "; ".join(f"c{i}={'v' * 90}" for i in range(300))  # 28 kB of ordinary headers still pass
    r = httpx.get(f"{server.url}/healthz", headers={"cookie": cookies})
    assert r.status_code == 200, r.text


def unread_websocket(port: int) -> socket.socket:
    """A WebSocket connection to /ws (raw socket, small receive buffer) whose client will never read a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


def flood_pings(sock: socket.socket, limit: int, stall: float = 1.0, with_frames: bool = False) -> int:
    """Send protocol pings (125 bytes, masked with zeros) until the server stops taking them for ``stall`` seconds
    or ``limit`` bytes are out; the bytes sent. ``with_frames``: a 4-byte binary message after every 400 pings, which
    the app reads at once (uvicorn's receive() resumed reading on each, however full the write buffer)."""
    ping = bytes([0x89, 0x80 | 125]) + bytes(4) + b"p" * 125
    frame = bytes([0x82, 0x80 | 4]) + bytes(4) + b"junk"
    pings = (ping * 400 + frame) * 3 if with_frames else ping * 1000
    sock.setblocking(False)
    sent, last = 0, time.monotonic()
    while sent < limit and time.monotonic() - last < stall:
        try:
            rest = len(pings) - sent % len(pings)  # whole frames only: the rest of the block first
            sent += sock.send(pings[-rest:])
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.02)
    return sent


@pytest.mark.parametrize("with_frames", [False, True], ids=["pings", "pings-and-frames"])
def test_ping_flood_from_a_client_that_never_reads_is_held_back(server: LiveServer, with_frames: bool) -> None:
    # Every ping is answered with a pong. uvicorn's WebSocket protocol wrote the pongs of a client that reads nothing
    # to a write buffer without bound and kept reading: the server's memory grew as fast as the client could send.
    # Binary messages among the pings made the app's receive() resume reading while the buffer was full.
    with contextlib.closing(unread_websocket(server.port)) as sock:
        sent = flood_pings(sock, limit=48_000_000, with_frames=with_frames)
    # The kernel's socket buffers on both sides hold a few MB; past them the server must stop reading.
    assert sent < 32_000_000, f"the server took {sent} bytes of pings from a client that reads none of its pongs"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
