"""Admission control for CPU work: a bounded queue in front of the thread pool, and no work for clients that left.

A plain ``ThreadPoolExecutor`` queues without bound, and a job runs even after its client has hung up: 64 abandoned
uploads of JPEGs that claim 36 MP kept the pool busy for seconds while new requests waited behind them. Here

- a job is admitted only while fewer than ``workers + queue_size`` jobs are pending (running or waiting); past that
  ``Overloaded`` is raised at once, which the routes answer with 503 and ``Retry-After``;
- a job whose client disconnects while it waits is cancelled, so a thread never picks it up (a job already running
  finishes: Python cannot stop a thread, and OpenCV calls are short once decoding has started).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """The work queue is full; the client should retry after ``retry_after`` seconds."""

    def __init__(self, pending: int, retry_after: int) -> None:
        super().__init__(f"server busy: {pending} jobs are running or waiting; retry after {retry_after} s")
        self.detail = str(self)
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected before its job ran; the job was dropped."""


class WorkPool:
    """The CPU thread pool with a bounded queue; counters for /metrics."""

    def __init__(
        self,
        workers: int,
        queue_size: int,
        retry_after: int = 1,
        on_skipped: Callable[[], None] | None = None,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="emotion-cpu")
        self.workers = workers
        self.capacity = workers + queue_size
        self.retry_after = retry_after
        self.on_skipped = on_skipped
        self.on_change = on_change  # (queued, running) after every change, under the lock: gauges for /metrics
        self._lock = threading.Lock()
        self.pending = 0  # admitted and not finished: running + waiting
        self.running = 0
        self.shed = 0  # refused: the queue was full
        self.skipped = 0  # cancelled before a thread took them: the client had gone

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return max(0, self.pending - self.running)

    def submit(self, fn: Callable[[], T], *, admit: bool = True) -> Future[T]:
        """Queue ``fn``; ``Overloaded`` if ``admit`` and the queue is full. ``admit=False`` is for the later steps of
        a job already admitted (the frames of a video), which must not fail half-way."""
        with self._lock:
            if admit and self.pending >= self.capacity:
                self.shed += 1
                raise Overloaded(self.pending, self.retry_after)
            self.pending += 1
            self._changed()

        def job() -> T:
            with self._lock:
                self.running += 1
                self._changed()
            try:
                return fn()
            finally:
                with self._lock:
                    self.running -= 1
                    self._changed()

        try:
            future = self.executor.submit(job)
        except BaseException:
            with self._lock:
                self.pending -= 1
                self._changed()
            raise
        future.add_done_callback(self._finished)
        return future

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.queued, self.running)

    def _finished(self, future: Future[Any]) -> None:
        with self._lock:
            self.pending -= 1
            skipped = future.cancelled()
            if skipped:
                self.skipped += 1
            self._changed()
        if skipped and self.on_skipped is not None:
            self.on_skipped()

    async def run(
        self,
        fn: Callable[[], T],
        *,
        admit: bool = True,
        client_gone: Callable[[], Awaitable[Any]] | None = None,
        release: Callable[[T], Any] | None = None,
    ) -> T:
        """``fn()`` in a thread. With ``client_gone`` (an awaitable that finishes when the client disconnects), the
        job is cancelled and ``ClientGone`` raised if that happens first. Cancelling the caller cancels the job.
        A job already running finishes unobserved: its result goes to ``release``, which frees what it holds (an
        opened video's decoder and thread)."""
        future = self.submit(fn, admit=admit)
        job = asyncio.wrap_future(future)
        if client_gone is None:
            return await job
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not job.done():
                job.cancel()  # also cancels the queued thread job (a running one finishes unobserved)
                if release is not None:
                    future.add_done_callback(partial(_release_result, release))
        if job.cancelled():
            raise ClientGone
        return job.result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _release_result(release: Callable[[T], Any], future: Future[T]) -> None:
    if not future.cancelled() and future.exception() is None:
        release(future.result())


async def disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the HTTP client disconnects. Only for after the body was read: then uvicorn's ``receive()``
    waits until the connection closes."""
    while (await receive())["type"] != "http.disconnect":
        pass
