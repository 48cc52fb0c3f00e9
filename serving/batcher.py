"""A dynamic batcher: concurrent requests are sampled together in one forward pass.

Requests from any route (``/generate``, the chat API, the rater page) are queued; one worker thread takes
the first waiting request plus everything already queued (at most ``max_batch_size``), runs the whole
batch with one call and hands every caller its own result. Under concurrent load (the previous batch held
more than one request) it also waits up to ``max_wait_ms`` for stragglers, so clients whose replies just
came back join the next batch; a lone client never waits. The one thread also means a model is never used
by two batches at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

_STOP = object()


class Batcher(Generic[J, R]):
    def __init__(
        self,
        run: Callable[[Sequence[J]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._last_size = 1
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    async def submit(self, job: J) -> R:
        """Queue one job and wait for its result (exceptions from the batch are raised here)."""
        fut: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._queue.put((job, fut))
        return await asyncio.wrap_future(fut)

    def submit_many(self, jobs: Sequence[J]) -> list[concurrent.futures.Future[R]]:
        futures = []
        for job in jobs:
            fut: concurrent.futures.Future[R] = concurrent.futures.Future()
            self._queue.put((job, fut))
            futures.append(fut)
        return futures

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _collect(self, first: Any) -> list[Any]:
        batch = [first]
        deadline = time.monotonic() + (self.max_wait if self._last_size > 1 else 0.0)
        while len(batch) < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = self._collect(first)
            self._last_size = len(batch)
            jobs = [job for job, _ in batch]
            try:
                results = self.run(jobs)
                if len(results) != len(jobs):
                    raise RuntimeError(f"batch of {len(jobs)} produced {len(results)} results")
            except Exception as exc:  # every caller gets the error; the loop keeps serving
                log.exception("batch of %d failed", len(jobs))
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            for (_, fut), result in zip(batch, results):
                fut.set_result(result)
