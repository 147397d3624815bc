"""Micro-batching: concurrent prompts share one encoder forward, run off the event loop.

Each caller puts ``(text, future)`` on a queue; one worker takes the first item, waits up to
``max_wait_ms`` for up to ``max_batch - 1`` more, and scores the batch in a single worker thread
(the encoder is not thread-safe and would only contend with itself for the cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ScoreFn = Callable[[Sequence[str]], np.ndarray]  # (N,) texts -> (N, M) probabilities


class MicroBatcher:
    """Scores texts in batches of at most ``max_batch``; ``max_batch == 1`` turns batching off."""

    def __init__(
        self, score: ScoreFn, *, max_batch: int = 32, max_wait_ms: float = 3.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:  # fmt: skip
        self._score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch  # (batch size, seconds) after each forward
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill-router-encode")

    def start(self) -> None:
        """Start the worker on the running loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker, fail whatever is still queued, and release the thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the router is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, text: str) -> np.ndarray:
        """(M,) probabilities of ``text``; raises whatever the score function raised for its batch."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def run_in_thread(self, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Run ``fn`` on the encoder thread (e.g. the warm-up), never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            await self._score_batch(batch)

    async def _score_batch(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        texts = [text for text, _ in batch]
        started = time.perf_counter()
        try:
            p = await asyncio.get_running_loop().run_in_executor(self._executor, self._score, texts)
            if p.shape[0] != len(texts):
                raise RuntimeError(f"the scorer returned {p.shape[0]} rows for {len(texts)} texts")
        except Exception as exc:  # every waiting request gets the failure and falls back
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(texts), time.perf_counter() - started)
        for row, (_, future) in zip(p, batch, strict=True):
            if not future.done():
                future.set_result(row)
