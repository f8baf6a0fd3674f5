"""Admission control against a real uvicorn on loopback: a bounded work queue (503 + Retry-After when full), work
dropped for clients that hung up, and both visible in /metrics.

The slow job is a real one: a 6000x6000 JPEG (400 kB of black) takes about half a second to decode and search.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import LiveServer, make_settings
from websockets.sync.client import connect
from y4m import astronaut_frame, jpeg


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((6000, 6000), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return buf.tobytes()


def serve(model_path: Path, **overrides: object) -> LiveServer:
    from server.app import create_app

    return LiveServer(create_app(make_settings(model_path, "haar", workers=1, **overrides)))


def metric_value(text: str, pattern: str) -> float:
    found = re.search(pattern + r" ([0-9.e+-]+)\n", text)
    return float(found.group(1)) if found else 0.0


def metric(server: LiveServer, pattern: str) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, pattern)


def test_full_queue_answers_503_with_retry_after(model_path: Path, big_jpeg: bytes) -> None:
    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            headers = {"content-type": "image/jpeg"}
            return await asyncio.gather(*(client.post("/predict", content=big_jpeg, headers=headers) for _ in range(8)))

    with serve(model_path, queue_size=1) as server:
        responses = asyncio.run(burst(server.url))
        statuses = sorted(r.status_code for r in responses)
        # One job runs, one waits: the other six are refused at once instead of queueing behind them.
        assert statuses.count(200) >= 2 and statuses.count(503) >= 4 and set(statuses) == {200, 503}, statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "busy" in refused.json()["detail"]
        assert metric(server, r'emotion_requests_shed_total\{route="/predict"\}') == statuses.count(503)
        assert metric(server, "emotion_work_queue_depth") == 0
        # Once the queue drains, requests are admitted again.
        r = httpx.post(
            f"{server.url}/predict", content=jpeg(astronaut_frame(320, 240)), headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 200


def test_work_of_clients_that_hung_up_is_dropped(model_path: Path, big_jpeg: bytes) -> None:
    request = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(big_jpeg)
        + big_jpeg
    )
    with serve(model_path, queue_size=64) as server:
        sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
        for sock in sockets:
            sock.sendall(request)
        deadline = time.monotonic() + 20
        while metric(server, "emotion_work_queue_depth") < 8:  # all read and queued behind the first
            assert time.monotonic() < deadline, "the uploads were never queued"
            time.sleep(0.05)
        for sock in sockets:
            sock.close()
        start = time.monotonic()
        while metric(server, "emotion_work_queue_depth") or metric(server, "emotion_work_in_progress"):
            assert time.monotonic() - start < 20
            time.sleep(0.05)
        skipped = metric(server, "emotion_work_skipped_total")
        assert skipped >= 8, f"only {skipped:g} of 9 waiting jobs were dropped"
        r = httpx.post(
            f"{server.url}/predict", content=jpeg(astronaut_frame(320, 240)), headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        print(f"abandoned: {skipped:g} jobs dropped, queue empty {time.monotonic() - start:.2f} s after the hang-up")


def test_live_frame_finding_the_queue_full_gets_busy_error(model_path: Path, big_jpeg: bytes) -> None:
    async def occupy(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/predict", content=big_jpeg, headers={"content-type": "image/jpeg"}) for _ in range(2))
            )

    with serve(model_path, queue_size=0) as server:
        done: list[list[httpx.Response]] = []
        worker = threading.Thread(target=lambda: done.append(asyncio.run(occupy(server.url))))
        worker.start()
        deadline = time.monotonic() + 20
        while not metric(server, "emotion_work_in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            ws.send(jpeg(astronaut_frame(320, 240)))
            message = ws.recv(timeout=20)
            assert '"busy' in message or "server busy" in message, message
        worker.join()
        assert metric(server, r'emotion_ws_frames_total\{outcome="shed"\}') >= 1


def test_connection_limit_serves_exactly_the_limit_then_answers_json_503_with_retry_after(model_path: Path) -> None:
    # uvicorn's own answer past limit_concurrency was plain text "Service Unavailable" without Retry-After, and it
    # counted the asking connection against the limit, so EMOTION_MAX_CONNECTIONS=3 served only two at once.
    with serve(model_path, max_connections=3, retry_after=7) as server:
        unfinished = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 9\r\n\r\n"
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            for sock in held:  # requests in flight: their bodies never finish
                sock.sendall(unfinished)
            # Two held, so every /metrics read is the third connection: served, until it sees all three in flight.
            deadline = time.monotonic() + 10
            while True:
                r = httpx.get(f"{server.url}/metrics")
                assert r.status_code == 200, (r.status_code, r.text)
                if metric_value(r.text, "emotion_http_requests_in_flight") >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert metric_value(r.text, "emotion_http_requests_in_flight") >= 3, r.text
            held.append(socket.create_connection(("127.0.0.1", server.port)))
            held[-1].sendall(unfinished)
            deadline = time.monotonic() + 10  # a fourth connection is one too many
            while (r := httpx.get(f"{server.url}/healthz")).status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert r.status_code == 503 and r.headers["retry-after"] == "7", (r.headers, r.text)
            assert "busy" in r.json()["detail"]
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while (r := httpx.get(f"{server.url}/healthz")).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 200
