"""WS /ws against a real uvicorn on loopback, with the ``websockets`` client: frames, errors, limits, flooding."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack

import cv2
import numpy as np
import pytest
from conftest import LiveServer, make_settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from y4m import astronaut_frame, jpeg

from server.live import LiveHub

MAX_FRAME_BYTES = 256 * 1024
MAX_CONNECTIONS = 3


@pytest.fixture(scope="module")
def server(model_path) -> Iterator[LiveServer]:
    from server.app import create_app

    settings = make_settings(model_path, "haar", ws_max_frame_bytes=MAX_FRAME_BYTES, ws_max_connections=MAX_CONNECTIONS)
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def frame_jpeg() -> bytes:
    return jpeg(astronaut_frame(640, 480))


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def receive(ws: ClientConnection, timeout: float = 20.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def hub(server: LiveServer) -> LiveHub:
    return LiveHub.of(server.app)


def wait_until_idle(server: LiveServer, timeout: float = 5.0) -> None:
    """Connections closed by earlier tests are released on the server a moment after the client closes."""
    deadline = time.monotonic() + timeout
    while hub(server).active:
        assert time.monotonic() < deadline, "server still counts open live connections"
        time.sleep(0.02)


def test_astronaut_frames_get_faces(server: LiveServer, frame_jpeg: bytes) -> None:
    with connect(ws_url(server)) as ws:
        for expected_id in (1, 2):
            ws.send(frame_jpeg)
            result = receive(ws)
            assert result["type"] == "result"
            assert result["frame_id"] == expected_id
            assert (result["width"], result["height"]) == (640, 480)
            assert result["dropped"] == 0
            assert result["server_ms"] > 0
            assert len(result["faces"]) == 1
            face = result["faces"][0]
            # The photo is letterboxed from x=80 to 560: the face (upper middle of the photo) lies inside it.
            box = face["box"]
            assert box["x"] >= 80 and box["x"] + box["w"] <= 560 and box["y"] + box["h"] <= 300
            assert face["emotion"] in face["probabilities"]
            assert abs(sum(face["probabilities"].values()) - 1) < 1e-3


def test_webp_frame(server: LiveServer) -> None:
    ok, webp = cv2.imencode(
        ".webp", cv2.cvtColor(astronaut_frame(640, 480), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 80]
    )
    assert ok
    with connect(ws_url(server)) as ws:
        ws.send(webp.tobytes())
        result = receive(ws)
        assert result["type"] == "result" and len(result["faces"]) == 1


def test_garbage_and_empty_frames_get_errors_and_connection_stays_usable(server: LiveServer, frame_jpeg: bytes) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(b"this is not an image at all")
        error = receive(ws)
        assert error["type"] == "error" and error["frame_id"] == 1
        assert "decode" in error["error"]

        ws.send(frame_jpeg[: len(frame_jpeg) // 3])  # a truncated JPEG: valid header, broken data
        error = receive(ws)
        assert error["type"] == "error" and error["frame_id"] == 2

        ws.send(b"")
        error = receive(ws)
        assert error["type"] == "error" and error["frame_id"] == 3 and "empty" in error["error"]

        ws.send(frame_jpeg)
        result = receive(ws)
        assert result["type"] == "result" and result["frame_id"] == 4 and len(result["faces"]) == 1


def test_control_messages(server: LiveServer, frame_jpeg: bytes) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"max_faces": 1}))
        assert receive(ws) == {"type": "ack", "config": {"max_faces": 1, "smoothing": 0.5, "raw": False}}
        ws.send(json.dumps({"type": "config", "max_faces": 2}))
        assert receive(ws) == {"type": "ack", "config": {"max_faces": 2, "smoothing": 0.5, "raw": False}}
        ws.send(json.dumps({"smoothing": 0, "raw": True}))
        assert receive(ws) == {"type": "ack", "config": {"max_faces": 2, "smoothing": 0.0, "raw": True}}
        ws.send('{"smoothing": -0.0}')
        ack = json.loads(ws.recv(timeout=20))["config"]["smoothing"]
        assert ack == 0 and math.copysign(1, ack) == 1  # not echoed as -0.0
        ws.send(json.dumps({"type": "ping"}))
        assert receive(ws) == {"type": "pong"}

        for bad, fragment in [
            ("{not json", "JSON"),
            ("[1, 2]", "JSON objects"),
            (json.dumps({"max_faces": 0}), "max_faces"),
            (json.dumps({"max_faces": "3"}), "max_faces"),
            (json.dumps({"max_faces": 10_000}), "max_faces"),
            (json.dumps({"colour": "red"}), "colour"),
            (json.dumps({"smoothing": -1}), "smoothing"),
            (json.dumps({"smoothing": "fast"}), "smoothing"),
            (json.dumps({"smoothing": 1e9}), "smoothing"),
            (json.dumps({"raw": 1}), "raw"),
            (json.dumps({"type": "shutdown"}), "shutdown"),
        ]:
            ws.send(bad)
            error = receive(ws)
            assert error["type"] == "error" and fragment in error["error"], (bad, error)
            assert error.get("frame_id") is None

        # A rejected message leaves the last valid setting in place, and frames still work.
        ws.send(frame_jpeg)
        result = receive(ws)
        assert result["type"] == "result" and result["frame_id"] == 1 and len(result["faces"]) == 1
        face = result["faces"][0]
        # smoothing 0 and raw: the smoothed values are this frame's own.
        assert face["track_id"] == 1 and face["raw_probabilities"] == face["probabilities"]


def test_max_faces_limits_faces(model_path, yunet_path) -> None:
    # Two astronauts side by side; the client then asks for one face only. YuNet, because the Haar cascade's
    # count on this picture depends on JPEG noise.
    from server.app import create_app

    photo = astronaut_frame(480, 480)
    pair = np.concatenate([photo, photo], axis=1)
    with (
        LiveServer(create_app(make_settings(model_path, "yunet", yunet_path))) as server,
        connect(ws_url(server)) as ws,
    ):
        ws.send(jpeg(pair))
        both = receive(ws)
        assert len(both["faces"]) == 2
        ws.send(json.dumps({"max_faces": 1}))
        assert receive(ws)["type"] == "ack"
        ws.send(jpeg(pair))
        assert len(receive(ws)["faces"]) == 1


def test_oversize_frame_closes_with_1009(server: LiveServer) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(b"\xff\xd8" + bytes(MAX_FRAME_BYTES))
        error = receive(ws)
        assert error["type"] == "error" and "over the limit" in error["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_flood_processes_newest_frames_with_bounded_pending(server: LiveServer, frame_jpeg: bytes) -> None:
    sent = 200
    before = hub(server).frames_dropped
    results = []
    with connect(ws_url(server)) as ws:
        for _ in range(sent):
            ws.send(frame_jpeg)
        deadline = time.monotonic() + 60
        while not results or results[-1]["frame_id"] < sent:
            assert time.monotonic() < deadline, f"frame {sent} never processed; got {results[-1:]}"
            message = receive(ws)
            assert message["type"] == "result", message
            results.append(message)
        # Nothing else is queued: the connection goes quiet once the last frame is answered.
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)

    ids = [r["frame_id"] for r in results]
    assert ids == sorted(set(ids)), "results must be for ever newer frames"
    assert ids[-1] == sent, "the last frame sent must be processed"
    assert len(results) <= sent // 4, f"{len(results)} results for {sent} frames: frames were queued, not dropped"
    # Every frame up to the one processed was either processed earlier or dropped: nothing waits in a queue.
    for count, r in enumerate(results, start=1):
        assert r["frame_id"] == count + r["dropped"], r
        assert len(r["faces"]) == 1
    assert results[-1]["dropped"] == sent - len(results)
    assert hub(server).frames_dropped - before == sent - len(results)
    assert hub(server).max_pending == 1
    print(f"flood: {sent} frames sent, {len(results)} processed, ids {ids}")


def test_connection_cap_answers_politely(server: LiveServer, frame_jpeg: bytes) -> None:
    wait_until_idle(server)
    with ExitStack() as stack:
        open_connections = [stack.enter_context(connect(ws_url(server))) for _ in range(MAX_CONNECTIONS)]
        # The admitted connections work.
        for ws in open_connections:
            ws.send(frame_jpeg)
        for ws in open_connections:
            assert receive(ws)["type"] == "result"

        with connect(ws_url(server)) as extra:
            message = receive(extra)
            assert message["type"] == "error" and "busy" in message["error"]
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=10)
            assert closed.value.rcvd.code == 1013
            assert "try again" in closed.value.rcvd.reason
        assert hub(server).rejected >= 1

    # Once a place is free, a new client is admitted.
    wait_until_idle(server)
    with connect(ws_url(server)) as ws:
        ws.send(frame_jpeg)
        assert receive(ws)["type"] == "result"


def test_a_default_over_the_limit_is_acknowledged_as_the_limit(model_path, yunet_path) -> None:
    # EMOTION_WS_DEFAULT_MAX_FACES 10 with EMOTION_MAX_FACES 1: one face is kept, and the ack says 1, not 10.
    from server.app import create_app

    photo = astronaut_frame(480, 480)
    pair = np.concatenate([photo, photo], axis=1)
    settings = make_settings(model_path, "yunet", yunet_path, max_faces=1, ws_default_max_faces=10)
    with LiveServer(create_app(settings)) as server, connect(ws_url(server)) as ws:
        ws.send(json.dumps({"smoothing": 0}))
        assert receive(ws)["config"]["max_faces"] == 1
        ws.send(jpeg(pair))
        assert len(receive(ws)["faces"]) == 1
