"""Several ``prefill-router serve`` processes behind a client that alternates between them.

Used by tests/test_serve_replicas.py and benchmarks/serve_replicas.py: each replica is the real CLI
in its own process (``kill()`` is a SIGKILL, as a crash), and :func:`send_all` is the client a load
balancer would be: request ``i`` goes to replica ``i % n`` first and, when that one cannot answer
(no connection, a broken one, a 5xx), to the next one, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.redis_support import free_port

CLI = Path(sys.executable).with_name("prefill-router")


@dataclass
class Replica:
    """One ``serve`` process: its URL and process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL (a crash: no draining, connections reset)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def replicas(
    router: Path, settings: dict[str, Any], n: int = 2, *, cache: Path | None = None,
    cpus: Sequence[str | None] | None = None, limit_s: float = 180,
) -> Iterator[list[Replica]]:  # fmt: skip
    """``n`` processes of ``prefill-router serve ROUTER --config serve.yaml`` (``settings``), started
    together (``cpus[i]`` pins replica ``i`` with taskset), once all are ready; stopped after."""
    started: list[Replica] = []
    try:
        for i in range(n):
            started.append(_start(router, settings, cache, cpus[i] if cpus else None))
        for one in started:
            _wait_ready(one, limit_s)
        yield started
    finally:
        for one in started:
            _stop(one)


def _start(router: Path, settings: dict[str, Any], cache: Path | None, cpus: str | None) -> Replica:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="replica-"))
    (folder / "serve.yaml").write_text(yaml.safe_dump(settings))
    command = [str(CLI), "serve", str(router), "--config", str(folder / "serve.yaml"), "--port", str(port)]
    command += ["--cache", str(cache)] if cache is not None else []
    command = ["taskset", "-c", cpus, *command] if cpus else command
    log = folder / "serve.log"
    with open(log, "wb") as output:
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    return Replica(f"http://127.0.0.1:{port}", process, log)


def _stop(replica: Replica) -> None:
    if replica.process.poll() is None:
        replica.process.send_signal(signal.SIGINT)
        try:
            replica.process.wait(10)
        except subprocess.TimeoutExpired:
            replica.kill()


def _wait_ready(replica: Replica, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            output = replica.log.read_text()[-3000:]
            raise RuntimeError(f"serve exited with {replica.process.returncode}:\n{output}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{replica.url}/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{replica.url} not ready after {limit_s:.0f} s:\n{replica.log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Call:
    """One request: the chat body, its session id (or None), the path."""

    body: dict[str, Any]
    session: str | None = None
    path: str = "/v1/chat/completions"


@dataclass
class Outcome:
    """How one request ended: status (0: lost), the replica that answered, headers, latency, retried."""

    status: int = 0
    replica: int = -1
    target: str | None = None
    cache: str | None = None
    source: str | None = None
    latency_ms: float = 0.0
    retried: bool = False
    scored: bool = False  # the decision came with probabilities (not a session, pin or fallback)
    error: str | None = None


def chat(text: str, session: str | None = None, model: str = "router") -> Call:
    """A chat completion of one user message."""
    return Call({"model": model, "messages": [{"role": "user", "content": text}]}, session)


async def send_all(
    urls: Sequence[str], calls: Sequence[Call], *, concurrency: int, headers: dict[str, str] | None = None,
    on_answer: Callable[[int], None] | None = None, timeout_s: float = 30,
) -> list[Outcome]:  # fmt: skip
    """Send ``calls`` with ``concurrency`` workers, call ``i`` first to ``urls[i % n]`` and on a failure
    to the next replica (once); ``on_answer(k)`` after the k-th answer. Outcomes in call order."""
    outcomes = [Outcome() for _ in calls]
    pending = iter(range(len(calls)))
    answered = 0
    limits = httpx.Limits(max_connections=concurrency * len(urls), max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal answered
            call, outcome, started = calls[i], outcomes[i], time.perf_counter()
            extra = dict(headers or {}) | ({"x-session-id": call.session} if call.session else {})
            for attempt in range(2):
                replica = (i + attempt) % len(urls)
                try:
                    response = await client.post(f"{urls[replica]}{call.path}", json=call.body, headers=extra)
                except httpx.HTTPError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    outcome.retried = True
                    continue
                if response.status_code >= 500 and attempt == 0:
                    outcome.error, outcome.retried = f"HTTP {response.status_code}", True
                    continue
                outcome.status, outcome.replica = response.status_code, replica
                outcome.target = response.headers.get("x-router-target")
                outcome.cache = response.headers.get("x-router-cache")
                outcome.source = _source(response)
                outcome.scored = "x-router-probabilities" in response.headers
                break
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            answered += 1
            if on_answer is not None:
                on_answer(answered)

        async def worker() -> None:
            for i in pending:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def _source(response: httpx.Response) -> str | None:
    """``session`` for a session-affinity decision (its reason says so), else None."""
    reason = response.headers.get("x-router-reason", "")
    return "session" if reason.startswith("session affinity") else None
