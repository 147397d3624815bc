"""The serving benchmarks' servers, each in its own process: the fake OpenAI-compatible upstream of
the tests and the real ``prefill-router serve`` CLI, on free loopback ports.

Separate processes, as in a deployment: the load generator, the proxy and the upstream each have
their own interpreter (no shared GIL), so a figure measures the proxy, not the harness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("prefill-router")
_UPSTREAM = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from tests.serve_support import FakeBehaviour, fake_upstream
behaviour = FakeBehaviour(modes={modes!r}, stall_s={stall_s!r})
uvicorn.run(fake_upstream(behaviour), host="127.0.0.1", port={port}, log_level="error", access_log=False)
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def upstream_process(
    cpus: str | None = None, modes: dict[str, str] | None = None, stall_s: float = 1.0
) -> Iterator[str]:
    """The fake upstream in a child process (answers at once; ``modes`` per upstream model, e.g.
    ``flaky``: see tests/serve_support.FakeBehaviour); its base URL."""
    port = free_port()
    code = _UPSTREAM.format(root=str(ROOT), port=port, modes=modes or {}, stall_s=stall_s)
    # It has no health route: any HTTP answer (404) means it is listening.
    with _process([sys.executable, "-c", code], f"http://127.0.0.1:{port}/", cpus, any_status=True):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def proxy_process(
    router: Path,
    upstream: str,
    targets: list[str],
    cpus: str | None = None,
    target_timeout_s: float | None = None,
    **settings: Any,
) -> Iterator[str]:
    """``prefill-router serve ROUTER`` (every target sent to ``upstream``; ``settings`` are serve.yaml
    fields such as ``max_batch`` or ``cache_size``) in a child process, once ready; its base URL."""
    port = free_port()
    target = {"base_url": upstream} | ({"timeout_s": target_timeout_s} if target_timeout_s else {})
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "serve.yaml"
        blob = {"targets": {name: dict(target) for name in targets}} | settings
        config.write_text(yaml.safe_dump(blob))
        command = [str(CLI), "serve", str(router), "--config", str(config), "--port", str(port)]
        with _process(command, f"http://127.0.0.1:{port}/ready", cpus):
            yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _process(
    command: list[str], ready_url: str, cpus: str | None, *, any_status: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (pinned to ``cpus``, e.g. "0" or "0,1", when given) until ``ready_url``
    answers 200 (any status with ``any_status``)."""
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            _wait_ready(process, ready_url, log, any_status)
            yield process
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Any, any_status: bool, limit_s: float = 300
) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"{process.args} exited with {process.returncode}:\n{log.read().decode()[-3000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(url, timeout=1).status_code
            if any_status or status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {limit_s:.0f} s")
