"""Graceful shutdown: on SIGTERM (or Ctrl-C) a replica leaves the load balancer's pool without dropping work.

1. At once: ``/readyz`` answers 503 (``draining: true``), every live stream finishes the frame in hand and is closed
   with 1001 "going away", and new live connections are closed the same way, so the page reconnects, through the
   load balancer, to another replica.
2. For ``drain_seconds`` the process keeps answering HTTP (a load balancer that polls readiness sees the 503 and
   stops sending; Kubernetes does the same with the pod's ``preStop`` sleep).
3. Then the signal goes on to uvicorn's own handler: it closes the port, lets in-flight requests finish (up to
   ``shutdown_timeout`` s) and runs the lifespan shutdown.

uvicorn installs its handlers with ``signal.signal`` before the lifespan starts; ``GracefulShutdown`` puts itself in
front of them for the app's lifetime and hands the signal on when the drain is done. A second signal is handed on at
once (a second Ctrl-C still forces the exit). Only the main thread can hold signal handlers: an app served from
another thread (as in some tests) is drained by calling ``drain()`` directly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LIVE_DRAIN_TIMEOUT_S = 5.0  # a live frame takes milliseconds; this only bounds a stuck one


class GracefulShutdown:
    def __init__(self, app: FastAPI, drain_seconds: float) -> None:
        self.app = app
        self.drain_seconds = drain_seconds
        self.draining = False
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._hand_on(sig, frame)
            return
        log.info("%s: draining (not ready, live streams sent elsewhere) before shutting down", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start, sig, frame)

    def _start(self, sig: int, frame: FrameType | None) -> None:
        async def drain_then_exit() -> None:
            try:
                await self.drain()
            finally:
                self._hand_on(sig, frame)

        self._task = asyncio.ensure_future(drain_then_exit())

    def _hand_on(self, sig: int, frame: FrameType | None) -> None:
        previous: Callable[[int, FrameType | None], Any] | int | None = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain(self) -> None:
        """Stop being ready, move the live streams away, then wait ``drain_seconds`` while still serving HTTP."""
        from server.live import LiveHub

        if self.draining:
            return
        self.draining = True
        self.app.state.metrics.draining.set(1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        moved = await LiveHub.of(self.app).go_away(LIVE_DRAIN_TIMEOUT_S)
        log.info("closed %d live connection(s) with 1001 going away", moved)
        await asyncio.sleep(max(0.0, self.drain_seconds - (loop.time() - start)))
