"""File helpers shared by every stage: atomic writes and strict UTF-8 reads.

Written by hand because the standard library has the two pieces (a temporary file in the same
directory and :func:`os.replace`) but no single call that combines them with fsync and clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prefill_router.errors import ConfigError, DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or exception inside the block leaves ``path`` untouched (the old file, or none) and
    removes the temporary file.

    Example::

        with atomic_path("out.parquet") as tmp:
            table.write(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    With ``replace``, an existing folder at ``path`` is swapped out (renamed aside, then deleted),
    so readers see the old folder or the new one, never a half-written one. Without it, a folder
    that appeared meanwhile (a concurrent run that finished first) is kept and ours discarded.
    A failure inside the block leaves ``path`` as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp creates 0700; give the usual permissions
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if replace or not target.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """``path`` as a Path, if a file can be written there; checked before any long work starts.

    The nearest existing folder on the way to ``path`` must be a writable folder (the missing
    ones are created on writing), and ``path`` itself must not be a folder.

    Raises:
        ConfigError: ``path`` is a folder, a parent is a file, or the folder is not writable.

    Example::

        check_writable("reports/eval.json", what="--json file")
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder; give a file name")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write the {what} {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the {what} {target}: no permission to write in {parent}")
    return target


def default_file_mode() -> int:
    """The mode a new file gets from ``open()`` under the process umask (0o644 usually)."""
    return 0o666 & ~_current_umask()


def _current_umask() -> int:
    return _UMASK


def _read_umask() -> int:
    """The process umask. Setting it is the only portable way to read it, and the umask is
    process-wide: a thread creating a file meanwhile would get the temporary mask. So it is read
    once, at import, from ``/proc/self/status`` where Linux offers it (no change at all), else by
    setting a restrictive mask for an instant (a file created meanwhile is private, not public)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def read_text(path: Path, *, what: str = "file") -> str:
    """Read a UTF-8 text file; a missing file, a folder or invalid UTF-8 raises :class:`DataError`.

    ``what`` names the kind of file in the messages (e.g. "price file").
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"no such {what}", source=str(path)) from exc
    except IsADirectoryError as exc:
        raise DataError(f"expected a {what}, found a directory", source=str(path)) from exc
    return decode_utf8(data, str(path), what=what)


def decode_utf8(data: bytes, source: str, *, what: str = "file") -> str:
    """Decode bytes as UTF-8, naming the line and byte offset of the first invalid sequence."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"invalid UTF-8 at byte {exc.start}; save the {what} as UTF-8",
            source=source,
            where=f"line {line}",
        ) from exc
