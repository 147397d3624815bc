"""Micro-batching: concurrent prompts share one encoder forward, run off the event loop.

Each caller puts ``(text, future)`` on a bounded queue; one worker takes the first item and what
else is queued, up to ``max_batch``, and scores the batch on one encoder thread. Only under load
(the previous batch held more than one prompt) does the first item wait up to ``max_wait_ms`` for
company: a lone request never pays the window. Prompts that arrive while the encoder runs queue
up and form the next batch anyway; the window only gathers the stragglers of a burst. The batch
runs on one thread (the encoder is not thread-safe and would only contend with itself for the
cores). A batch that fails is scored again prompt by prompt, so one bad prompt fails only its own
request. The encoder thread is a daemon: an encoder that never returns cannot keep the process
from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

ScoreFn = Callable[[Sequence[str]], np.ndarray]  # (N,) texts -> (N, M) probabilities
T = TypeVar("T")
_Job = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class QueueFullError(RuntimeError):
    """More prompts are waiting for the encoder than ``max_queue``: the request is not queued."""


class MicroBatcher:
    """Scores texts in batches of at most ``max_batch``; ``max_batch == 1`` turns batching off.

    At most ``max_queue`` texts wait for the encoder; :meth:`score` raises
    :class:`QueueFullError` at once beyond that.
    """

    def __init__(
        self, score: ScoreFn, *, max_batch: int = 32, max_wait_ms: float = 3.0, max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:  # fmt: skip
        self._score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch  # (batch size, seconds) after each forward
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = WorkerThread("prefill-router-encode")
        self._last_batch = 1  # prompts in the previous batch: > 1 means load, worth waiting for

    def start(self) -> None:
        """Start the worker on the running loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    @property
    def waiting(self) -> int:
        """Texts queued for the encoder now."""
        return 0 if self._queue is None else self._queue.qsize()

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
        self._thread.stop()

    async def score(self, text: str) -> np.ndarray:
        """(M,) probabilities of ``text``; raises what the score function raised for it, or
        :class:`QueueFullError` when ``max_queue`` texts are already waiting."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((text, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.max_queue} prompts are already waiting for the encoder") from None
        return await future

    async def run_in_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the encoder thread (e.g. the warm-up), never on the event loop."""
        return await self._thread.run(fn)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + (self.max_wait_s if self._last_batch > 1 else 0.0)
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
            self._last_batch = len(batch)
            batch = [item for item in batch if not item[1].done()]  # callers past their deadline
            if batch:
                await self._score_batch(batch)

    async def _score_batch(self, batch: list[tuple[str, asyncio.Future[np.ndarray]]]) -> None:
        texts = [text for text, _ in batch]
        started = time.perf_counter()
        try:
            p = await self._thread.run(lambda: self._score(texts))
            if p.shape[0] != len(texts):
                raise RuntimeError(f"the scorer returned {p.shape[0]} rows for {len(texts)} texts")
        except Exception as exc:
            if len(batch) == 1:  # the request's own failure: it falls back
                _resolve(batch[0][1], None, exc)
                return
            for item in batch:  # find the prompts at fault; the others are scored as usual
                await self._score_batch([item])
            return
        if self._on_batch is not None:
            self._on_batch(len(texts), time.perf_counter() - started)
        for row, (_, future) in zip(p, batch, strict=True):
            _resolve(future, row, None)


class WorkerThread:
    """One daemon thread that runs functions in order and hands their results back to the event loop.

    A daemon, so a function that never returns cannot keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the thread (started on first use), awaited without blocking the loop."""
        if not self._started:
            self._thread.start()
            self._started = True
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return await future

    def stop(self) -> None:
        """Let the thread end after the functions already queued."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            loop = future.get_loop()
            try:
                result = fn()
            except Exception as exc:
                _call_soon(loop, _resolve, future, None, exc)
            else:
                _call_soon(loop, _resolve, future, result, None)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the encoder ran
        loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[Any], result: Any, exc: Exception | None) -> None:
    if future.done():  # cancelled: its caller gave up (e.g. the scoring deadline)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
