"""Two replicas of the service behind a real nginx on loopback (``deploy/local/cluster.py``).

Shown here: HTTP requests and live streams spread over the replicas; a replica killed (SIGKILL) mid-stream loses no
HTTP request (nginx sends it to the other replica) and a live client that reconnects like the page carries on at
the other replica; a rolling restart (SIGTERM, drain, start again, one replica at a time) drops nothing.
Skips where nginx is not installed (``apt-get install nginx-light``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "local"))
from cluster import NGINX, LocalCluster  # noqa: E402

if not Path(NGINX).is_file():
    pytest.skip(f"nginx is missing ({NGINX}): apt-get install -y nginx-light", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(model_path: Path) -> Iterator[LocalCluster]:
    env = {"EMOTION_MODEL_PATH": str(model_path), "EMOTION_DETECTOR": "haar", "EMOTION_THREADS": "1"}
    with LocalCluster(replicas=2, env=env) as running:
        yield running


class PageLikeStream(threading.Thread):
    """A live client that behaves like web/live.js: one frame in flight, and when the connection closes it
    reconnects (at once after 1001 going away, after a short wait otherwise)."""

    def __init__(self, url: str, frame: bytes) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frame = frame
        self.stop = threading.Event()
        self.results: list[tuple[float, str]] = []  # (time, replica address)
        self.closes: list[int | None] = []
        self.errors: list[str] = []

    def run(self) -> None:
        import websockets.sync.client as ws
        from websockets.exceptions import ConnectionClosed

        while not self.stop.is_set():
            code = None
            try:
                with ws.connect(self.url, open_timeout=5) as conn:
                    replica = conn.response.headers["X-Upstream"]
                    try:
                        while not self.stop.is_set():
                            conn.send(self.frame)
                            message = json.loads(conn.recv(timeout=10))
                            if message["type"] == "result":
                                self.results.append((time.monotonic(), replica))
                            else:
                                self.errors.append(message.get("error", str(message)))
                    except ConnectionClosed:
                        code = conn.close_code
                        self.closes.append(code)
            except Exception as exc:  # refused handshakes, timeouts: the page retries them too
                self.errors.append(f"{type(exc).__name__}: {exc}")
            if not self.stop.is_set():
                time.sleep(0 if code == 1001 else 0.3)

    def replicas_since(self, t: float) -> set[str]:
        return {replica for when, replica in self.results if when > t}

    def halt(self) -> None:
        self.stop.set()
        self.join(15)


class HttpLoad(threading.Thread):
    """POST /predict through nginx in a loop; every answer's status (or exception) is kept."""

    def __init__(self, url: str, image: bytes) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.image = image
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.replicas: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(f"{self.url}/predict", content=self.image, headers={"content-type": "image/jpeg"})
                    self.statuses.append(r.status_code)
                    self.replicas.append(r.headers.get("X-Upstream", ""))
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def halt(self) -> None:
        self.stop.set()
        self.join(30)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_requests_and_streams_spread(cluster: LocalCluster, astronaut_jpeg: bytes) -> None:
    import websockets.sync.client as ws

    addresses = {r.address for r in cluster.replicas}
    with httpx.Client(base_url=cluster.url) as client:
        answers = [
            client.post("/predict", content=astronaut_jpeg, headers={"content-type": "image/jpeg"}) for _ in range(8)
        ]
    assert all(r.status_code == 200 and len(r.json()["faces"]) == 1 for r in answers)
    assert {r.headers["X-Upstream"] for r in answers} == addresses

    streams = []
    for _ in range(4):
        with ws.connect(cluster.ws_url) as conn:
            conn.send(astronaut_jpeg)
            assert json.loads(conn.recv(timeout=10))["type"] == "result"
            streams.append(conn.response.headers["X-Upstream"])
    assert set(streams) == addresses


def test_killed_replica_loses_no_request(cluster: LocalCluster, astronaut_jpeg: bytes) -> None:
    streams = [PageLikeStream(cluster.ws_url, astronaut_jpeg) for _ in range(2)]
    loads = [HttpLoad(cluster.url, astronaut_jpeg) for _ in range(2)]
    for worker in [*streams, *loads]:
        worker.start()
    try:
        wait_for(lambda: all(s.results for s in streams), 20, "the streams got no results")
        victim = cluster.replica_at(streams[0].results[-1][1])
        time.sleep(0.5)
        killed_at = time.monotonic()
        victim.stop(signal.SIGKILL)
        other = next(r.address for r in cluster.replicas if r is not victim)
        wait_for(lambda: all(other in s.replicas_since(killed_at) for s in streams), 20, "no stream moved over")
        time.sleep(1.0)
    finally:
        for worker in [*loads, *streams]:
            worker.halt()
        victim.start()
        victim.wait_ready()
        cluster.wait_balanced(victim)  # back in nginx's rotation before the next test
    statuses = [status for load in loads for status in load.statuses]
    assert not [f for load in loads for f in load.failures], "HTTP requests were lost"
    assert len(statuses) >= 10 and set(statuses) == {200}
    for stream in streams:
        assert stream.replicas_since(killed_at + 0.5) == {other}


def test_rolling_restart_drops_nothing(cluster: LocalCluster, astronaut_jpeg: bytes) -> None:
    streams = [PageLikeStream(cluster.ws_url, astronaut_jpeg) for _ in range(2)]
    loads = [HttpLoad(cluster.url, astronaut_jpeg) for _ in range(2)]
    for worker in [*streams, *loads]:
        worker.start()
    try:
        wait_for(lambda: all(s.results for s in streams), 20, "the streams got no results")
        started = time.monotonic()
        cluster.rolling_restart()
        finished = time.monotonic()
        wait_for(lambda: all(s.replicas_since(finished) for s in streams), 20, "streams did not resume")
    finally:
        for worker in [*loads, *streams]:
            worker.halt()
    assert not [f for load in loads for f in load.failures], "HTTP requests failed during the rolling restart"
    statuses = [status for load in loads for status in load.statuses]
    assert len(statuses) >= 10 and set(statuses) == {200}
    # Every stream was told to move (1001) at least once, and never cut off any other way.
    for stream in streams:
        assert stream.closes and set(stream.closes) == {1001}, stream.closes
        assert all("shutting down" in e for e in stream.errors), stream.errors
        assert stream.replicas_since(started)
