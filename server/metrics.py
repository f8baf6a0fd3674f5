"""Prometheus metrics with ``prometheus-client``, correct with one or several worker processes.

One process: each app has a registry of its own (the service's metrics plus the library's process, platform and GC
collectors), so several apps in one test process do not add up each other's counts.

Several processes (``python -m server --workers N``): every process writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (``server.__main__`` creates and empties that directory before the workers start), and
whichever worker answers ``/metrics`` merges all of them with ``MultiProcessCollector``: counters and histograms are
summed over processes, the live-connection and in-flight gauges are summed over the processes still alive. The
``process_*`` and GC series are left out there: they describe one process, and a scrape lands on any of them.

Label values are short names (a route template, a model's file name), never absolute paths.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# The *_created series double the output and no dashboard here reads them; they do not exist in multiprocess mode.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    """The directory shared by the worker processes, or None when this process reports alone."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The service's metrics. ``render()`` answers ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        if multiprocess_dir() is None:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)

        self.http_requests = Counter(
            "emotion_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "emotion_http_request_duration_seconds",
            "HTTP request latency, to the end of the response body.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_in_flight = Gauge(
            "emotion_http_requests_in_flight",
            "HTTP requests being answered now.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.faces_detected = Counter(
            "emotion_faces_detected", "Faces found in images sent to POST /predict.", registry=registry
        )
        self.stage_duration = Histogram(
            "emotion_stage_duration_seconds",
            "Pipeline stage latency of POST /predict (decode, detect, classify).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Admission control (server.admission): each process has its own pool, so the gauges add up over processes.
        self.work_queue_depth = Gauge(
            "emotion_work_queue_depth",
            "CPU jobs waiting for a thread.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.work_in_progress = Gauge(
            "emotion_work_in_progress",
            "CPU jobs running.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.requests_shed = Counter(
            "emotion_requests_shed",
            "Requests answered 503 with Retry-After because the work queue was full, by route template.",
            ["route"],
            registry=registry,
        )
        self.work_skipped = Counter(
            "emotion_work_skipped", "CPU jobs dropped unrun: their client had gone.", registry=registry
        )
        self.ws_connections = Counter(
            "emotion_ws_connections",
            "Live connections by outcome: accepted, rejected (server busy), draining (sent elsewhere on shutdown).",
            ["outcome"],
            registry=registry,
        )
        # The HorizontalPodAutoscaler example in deploy/ scales on this one (per pod, through prometheus-adapter).
        self.ws_active = Gauge(
            "emotion_ws_connections_active",
            "Live WebSocket connections open now.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ws_frames = Counter(
            "emotion_ws_frames",
            "Live frames by outcome: processed, dropped (a newer frame replaced it), shed (work queue full), error.",
            ["outcome"],
            registry=registry,
        )
        self.ws_frame_duration = Histogram(
            "emotion_ws_frame_duration_seconds",
            "Live frame processing time (decode + detect + classify).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "emotion_model_info",
            "The loaded classifier (file name, version) and face detector; value 1.",
            ["model", "version", "detector"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.draining = Gauge(
            "emotion_draining",
            "1 while the process is shutting down (not ready, live connections sent elsewhere).",
            multiprocess_mode="livemax",
            registry=registry,
        )

    def render(self) -> bytes:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry)

    @staticmethod
    def process_exited() -> None:
        """Drop this process's live gauges from the shared files (call when a worker stops)."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())
