"""The exception hierarchy of prefill-router.

Every error the package raises on purpose derives from :class:`PrefillRouterError`, so callers
can catch one type; the CLI turns each into a one-line message and the exit code on its class.

::

    PrefillRouterError                  exit 1   anything we raise on purpose
    ├── DataError                       exit 2   a dataset file or source is malformed
    │   └── UnknownTargetError          exit 2   a target name that the dataset does not hold
    ├── ConfigError                     exit 3   a bad option value or settings file
    ├── MissingDependencyError          exit 4   an optional package is not installed
    └── EncodeError                     exit 5   an encoder cannot be loaded or produced bad features
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrefillRouterError(Exception):
    """Base class of every error prefill-router raises on purpose."""

    exit_code = 1


class DataError(PrefillRouterError):
    """A dataset file, importer source or dataset argument is malformed.

    The message names the file, the row or column where possible, and what was expected.
    """

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, where: str | None = None) -> None:
        self.source = source
        self.where = where
        prefix = ": ".join(part for part in (source, where) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnknownTargetError(DataError):
    """A target (model) name that is not in the dataset or router."""

    def __init__(self, name: str, known: Iterable[str], *, source: str | None = None) -> None:
        known = list(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown target {name!r}.{hint} Known targets: {', '.join(sorted(known))}", source=source
        )
        self.name = name


class ConfigError(PrefillRouterError):
    """An option value or settings file is invalid."""

    exit_code = 3


class MissingDependencyError(PrefillRouterError):
    """An optional package is needed but not installed; the message holds the pip command."""

    exit_code = 4


class EncodeError(PrefillRouterError):
    """An encoder cannot be loaded, or a forward pass produced unusable (NaN/inf) features."""

    exit_code = 5
