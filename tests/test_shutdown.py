"""Graceful shutdown of a real ``python -m server`` process on loopback (``server/shutdown.py``).

On SIGTERM the server must at once answer /readyz with 503, close its live streams with 1001 "going away" (after
answering the frame in hand) and turn new ones away the same way, keep answering HTTP for EMOTION_DRAIN_SECONDS,
then close its port while a request already in flight still gets its full answer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import ROOT, wait_until_ready

DRAIN_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the headers: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(v)
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, body


def test_sigterm_drains_then_exits(model_path: Path, astronaut_bgr: np.ndarray, astronaut_jpeg: bytes) -> None:
    import websockets.sync.client as ws
    from websockets.exceptions import ConnectionClosed

    big_frame = cv2.imencode(".jpg", cv2.resize(astronaut_bgr, (4000, 4000)))[1].tobytes()
    port = free_port()
    env = {
        **os.environ,
        "EMOTION_MODEL_PATH": str(model_path),
        "EMOTION_DETECTOR": "haar",
        "EMOTION_DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    stack = ExitStack()
    try:
        wait_until_ready(proc, port, "python -m server")
        live = stack.enter_context(ws.connect(f"ws://127.0.0.1:{port}/ws", max_size=None))
        live.send(astronaut_jpeg)
        assert json.loads(live.recv(timeout=10))["type"] == "result"

        # An upload in flight: headers and half the body now, the rest after the port has closed.
        upload = socket.create_connection(("127.0.0.1", port))
        half = len(astronaut_jpeg) // 2
        upload.sendall(
            f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {len(astronaut_jpeg)}"
            f"\r\n\r\n".encode()
            + astronaut_jpeg[:half]
        )
        time.sleep(0.2)

        live.send(big_frame)  # in work when the signal comes (decoding 12 MP takes a while): it is still answered
        time.sleep(0.03)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        messages = []
        with pytest.raises(ConnectionClosed):
            while True:
                messages.append(json.loads(live.recv(timeout=5)))
        assert live.close_code == 1001 and "going away" in live.close_reason
        assert time.monotonic() - signalled < DRAIN_SECONDS  # at once, not after the drain
        assert [m["type"] for m in messages] == ["result"] and messages[0]["frame_id"] == 2

        ready = httpx.get(f"{url}/readyz", timeout=2)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200  # still serving during the drain
        metrics = httpx.get(f"{url}/metrics", timeout=2).text
        assert "emotion_draining 1.0" in metrics

        with ws.connect(f"ws://127.0.0.1:{port}/ws") as late:  # a new stream is sent elsewhere at once
            assert "shutting down" in json.loads(late.recv(timeout=5))["error"]
            with pytest.raises(ConnectionClosed):
                late.recv(timeout=5)
            assert late.close_code == 1001

        # After the drain the port closes; the upload started before the signal still completes.
        deadline = signalled + DRAIN_SECONDS + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the port stayed open after the drain"
            time.sleep(0.05)
        assert time.monotonic() - signalled >= DRAIN_SECONDS - 0.1
        assert proc.poll() is None, "the server exited with a request in flight"
        upload.sendall(astronaut_jpeg[half:])
        status, body = read_response(upload)
        upload.close()
        assert status == 200 and len(json.loads(body)["faces"]) == 1

        assert proc.wait(15) in (0, -signal.SIGTERM)
        log = proc.stdout.read() if proc.stdout else ""
        assert "closed 1 live connection(s) with 1001 going away" in log
        assert "Traceback" not in log
    finally:
        stack.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
