"""Merge requests that arrive together into one generate() call, on one background worker.

The worker owns the model: it takes the first waiting job, gathers whatever else arrives within
`window_s` (up to `max_batch`), splits the gathered jobs by sampling settings and runs each group
as one batch in a thread, so the event loop keeps accepting requests meanwhile. Under load the
queue fills while a batch runs, so the next batch is full at once; when idle a lone request
waits at most `window_s`. Streaming jobs batch like the rest: each row streams its own tokens.

>>> import asyncio
>>> class Echo:
...     supports_batching = True
...     calls = []
...     def run(self, jobs):
...         self.calls.append(len(jobs))
...         return [j for j in jobs]
>>> async def demo():
...     batcher = Batcher(Echo(), max_batch=4, window_s=0.05)
...     await batcher.start()
...     out = await asyncio.gather(*(batcher.submit(n) for n in range(3)))
...     await batcher.stop()
...     return out
>>> asyncio.run(demo()), Echo.calls
([0, 1, 2], [3])
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

log = logging.getLogger(__name__)


def _group(jobs: list) -> list[list]:
    """Jobs split by batch key (first-come order kept); plain objects (tests) form one group."""
    groups: dict = defaultdict(list)
    for job in jobs:
        groups[job.batch_key() if hasattr(job, "batch_key") else None].append(job)
    return list(groups.values())


class Batcher:
    """Queue + one worker task; `await submit(job)` returns the backend's result for that job."""

    def __init__(self, backend, *, max_batch: int = 8, window_s: float = 0.005):
        self.backend = backend
        # A backend that cannot batch (llama.cpp here) runs jobs one by one, so each streams at once.
        self.max_batch = max(1, max_batch) if getattr(backend, "supports_batching", False) else 1
        self.window_s = window_s
        self.batches_run = 0
        self.rows_run = 0
        self.busy_s = 0.0  # time spent inside backend.run
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(), name="honed-batcher")

    async def stop(self) -> None:
        """Stop the worker (the server calls it after in-flight requests have finished)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, job) -> asyncio.Future:
        """Queue `job`; the returned future resolves to its result (or the backend's exception)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running (start() it inside the server's lifespan)")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return future

    async def _gather(self) -> list[tuple]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.TimeoutError, TimeoutError):
                break
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            futures = {id(job): future for job, future in batch}
            live = [job for job, future in batch if not future.done() and not _cancelled(job)]
            for job, future in batch:
                if job not in live and not future.done():
                    future.cancel()
            for group in _group(live):
                started = time.perf_counter()
                try:
                    results = await asyncio.to_thread(self.backend.run, group)
                except Exception as err:  # a failed batch fails its requests, never the worker
                    log.exception("generation failed for a batch of %d", len(group))
                    results = [err] * len(group)
                self.busy_s += time.perf_counter() - started
                self.batches_run += 1
                self.rows_run += len(group)
                for job, result in zip(group, results):
                    future = futures[id(job)]
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)


def _cancelled(job) -> bool:
    flag = getattr(job, "cancelled", None)
    return bool(flag is not None and flag.is_set())
