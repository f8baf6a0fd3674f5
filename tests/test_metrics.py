"""GET /metrics: prometheus-client's exposition, parsed with its own parser; one process and two worker processes.

The two-worker test runs ``python -m server --workers 2`` (real uvicorn worker processes sharing the port) and checks
that every scrape, whichever worker answers it, counts the requests of both: each worker's own share is read from
its file in PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, LiveServer, make_settings, wait_until_ready
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(fams: dict[str, object], name: str, sample: str | None = None, **labels: str) -> float:
    """Sum of the samples of family ``name`` (sample name ``sample``) whose labels include ``labels``."""
    total = 0.0
    for s in fams[name].samples:  # type: ignore[attr-defined]
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def assert_no_paths_in_labels(fams: dict[str, object], routes: set[str]) -> None:
    for family in fams.values():
        for s in family.samples:  # type: ignore[attr-defined]
            for key, v in s.labels.items():
                if key == "route":
                    assert v in routes, f"{s.name}: route label {v!r} is not a route template"
                else:
                    assert "/" not in v and "\\" not in v, f"{s.name}: label {key}={v!r} looks like a file path"


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    with LiveServer(create_app(make_settings(model_path, "haar"))) as live:
        yield live


def test_metrics_parse_and_count(server: LiveServer, astronaut_jpeg: bytes) -> None:
    with httpx.Client(base_url=server.url) as client:
        before = families(client.get("/metrics").text)
        for _ in range(3):
            assert client.post("/predict", content=astronaut_jpeg, headers={"content-type": "image/jpeg"}).status_code
        assert client.post("/predict", content=b"", headers={"content-type": "image/jpeg"}).status_code == 400
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = families(r.text)

    def delta(name: str, sample: str | None = None, **labels: str) -> float:
        old = value(before, name, sample, **labels) if name in before else 0.0
        return value(fams, name, sample, **labels) - old

    assert fams["emotion_http_requests"].type == "counter"
    assert delta("emotion_http_requests", "emotion_http_requests_total", route="/predict", status="200") == 3
    assert delta("emotion_http_requests", "emotion_http_requests_total", route="/predict", status="400") == 1
    assert fams["emotion_http_request_duration_seconds"].type == "histogram"
    assert delta("emotion_http_request_duration_seconds", "emotion_http_request_duration_seconds_count") >= 4
    assert delta("emotion_stage_duration_seconds", "emotion_stage_duration_seconds_count", stage="detect") == 3
    assert delta("emotion_faces_detected", "emotion_faces_detected_total") == 3  # the astronaut, three times
    # The scrape itself is in flight while it is rendered.
    assert value(fams, "emotion_http_requests_in_flight") == 1
    assert value(fams, "emotion_draining") == 0
    info = [s for s in fams["emotion_model_info"].samples]
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["detector"] == "haar" and info[0].labels["model"].endswith(".onnx")
    # The library's default collectors: this process, the interpreter, the garbage collector.
    assert value(fams, "process_resident_memory_bytes") > 0
    assert "python_info" in fams and "python_gc_collections" in fams
    assert_no_paths_in_labels(fams, {"/predict", "/metrics"})


def test_metrics_count_live_connections(server: LiveServer, astronaut_jpeg: bytes) -> None:
    import websockets.sync.client as ws

    def scrape() -> dict[str, object]:
        return families(httpx.get(f"{server.url}/metrics").text)

    before = scrape()
    with ws.connect(f"ws://127.0.0.1:{server.port}/ws") as conn:
        conn.send(astronaut_jpeg)
        assert '"result"' in conn.recv(timeout=10)
        during = scrape()
    assert value(during, "emotion_ws_connections_active") == 1
    processed = value(during, "emotion_ws_frames", "emotion_ws_frames_total", outcome="processed")
    assert processed - value(before, "emotion_ws_frames", "emotion_ws_frames_total", outcome="processed") == 1


def per_worker_counts(metrics_dir: Path, tmp_path: Path) -> dict[str, float]:
    """GET /healthz answered by each worker, read from that worker's own counter file."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for db in metrics_dir.glob("counter_*.db"):
        alone = tmp_path / db.stem
        alone.mkdir(parents=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        fams = {f.name: f for f in registry.collect()}
        # A worker's file may hold other counters (shed, skipped work) before its first /healthz is counted.
        if "emotion_http_requests" in fams:
            counts[db.stem] = value(fams, "emotion_http_requests", "emotion_http_requests_total", route="/healthz")
    return counts


def test_two_workers_share_their_metrics(model_path: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    port = free_port()
    env = {
        **os.environ,
        "EMOTION_MODEL_PATH": str(model_path),
        "EMOTION_DETECTOR": "haar",
        "EMOTION_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    command = [sys.executable, "-m", "server", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(proc, port, "python -m server --workers 2")
        url = f"http://127.0.0.1:{port}"

        def get(_: int) -> int:
            # A new connection per request: the kernel hands each to whichever worker accepts first.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/healthz")
                return conn.getresponse().status
            finally:
                conn.close()

        # Which worker accepts a connection is the kernel's choice, and on a busy machine one worker can take a
        # whole batch: send batches until both have answered some (each count read from the worker's own file).
        n = 0
        for _ in range(20):
            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(get, range(60))) == {200}
            n += 60
            # A request is counted once its answer is sent: the last one may still be on its way into the files.
            deadline = time.monotonic() + 5
            while sum((workers := per_worker_counts(metrics_dir, tmp_path / f"r{time.monotonic_ns()}")).values()) < n:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if len(workers) == 2:
                break
        assert len(workers) == 2 and all(count > 0 for count in workers.values()), workers
        assert sum(workers.values()) == n
        # Several scrapes (they land on either worker): each one reports the requests of both.
        for _ in range(6):
            text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
            fams = families(text)
            assert value(fams, "emotion_http_requests", "emotion_http_requests_total", route="/healthz") == n
            assert value(fams, "emotion_model_info") == 1  # one series, not one per worker
            assert "process_resident_memory_bytes" not in text  # per-process series are left out here
            assert not re.search(r'pid="\d+"', text)
            assert_no_paths_in_labels(fams, {"/healthz", "/metrics", "/readyz"})
    finally:
        proc.terminate()
        proc.wait(30)
