"""The decision log: one JSON line per request, written off the event loop, rotated by size.

Requests hand their record to a bounded queue and return at once; one daemon thread writes the
lines through :class:`logging.handlers.RotatingFileHandler` (``FILE``, then ``FILE.1`` ...
``FILE.<backups>``). A disk that stalls or a full queue never slows a request: lines that find
the queue full, or that cannot be written, are dropped and counted.

Example::

    log = DecisionLog(Path("decisions.jsonl"), max_bytes=100_000_000, backups=5)
    log.write({"target": "gpt-4o", "status": 200})
    log.close()
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_QUEUE_LINES = 10_000  # lines waiting for the writer before new ones are dropped
log = logging.getLogger("prefill_router.serve")


class DecisionLog:
    """Appends JSON lines to ``path`` from a writer thread; see the module docstring."""

    def __init__(
        self, path: Path, *, max_bytes: int = 100_000_000, backups: int = 5,
        on_drop: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._on_drop = on_drop
        self._lines: queue.Queue[str | None] = queue.Queue(_QUEUE_LINES)
        self._thread = threading.Thread(target=self._run, name="prefill-router-decision-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (with the time added); never blocks."""
        line = json.dumps({"time": round(time.time(), 3), **record}, separators=(",", ":"))
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            if self._on_drop is not None:
                self._on_drop()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued line is written (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self._lines.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._lines.unfinished_tasks

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout_s``) and stop the writer."""
        with contextlib.suppress(queue.Full):
            self._lines.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _dropped(self) -> None:
        if self._on_drop is not None:
            self._on_drop()

    def _run(self) -> None:
        # Opened here, in the writer thread: even opening the file (a FIFO, a hung NFS mount) can block.
        handler: _RotatingLines | None = None
        try:
            handler = _RotatingLines(self.path, self.max_bytes, self.backups, on_error=self._dropped)
        except OSError as exc:
            log.error("the decision log %s cannot be opened (%s); its lines are dropped", self.path, exc)
        while True:
            line = self._lines.get()
            try:
                if line is None:
                    if handler is not None:
                        with contextlib.suppress(OSError):
                            handler.close()
                    return
                if handler is None:
                    self._dropped()
                else:
                    handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
            finally:
                self._lines.task_done()


class _RotatingLines(logging.handlers.RotatingFileHandler):
    """Lines to a size-rotated file; a line that cannot be written (disk full, a closed pipe) is
    reported to ``on_error`` instead of printed with a traceback."""

    def __init__(self, path: Path, max_bytes: int, backups: int, *, on_error: Callable[[], None]) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(message)s"))
        self._on_error = on_error

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._on_error()
