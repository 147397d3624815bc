"""The exception hierarchy of prefill-router.

Every error the package raises on purpose derives from :class:`PrefillRouterError`, so callers
can catch one type; the CLI turns each into a one-line message and the exit code on its class,
the proxy's HTTP error handler turns an :class:`ApiError` into an OpenAI error envelope.

::

    PrefillRouterError                  exit 1   anything we raise on purpose
    ├── DataError                       exit 2   a dataset file or source is malformed
    │   └── UnknownTargetError          exit 2   a target name that the dataset does not hold
    ├── ConfigError                     exit 3   a bad option value or settings file
    ├── MissingDependencyError          exit 4   an optional package is not installed
    ├── EncodeError                     exit 5   an encoder cannot be loaded or produced bad features
    └── ApiError                        HTTP     a request the proxy refuses: status, OpenAI type, field
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


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


class ApiError(PrefillRouterError):
    """A request the proxy refuses: its HTTP status, OpenAI error type and offending field.

    The proxy answers it as the OpenAI envelope ``{"error": {message, type, param, code}}``.

    Args:
        status: the HTTP status code (400, 401, 403, 404, 413, 502, 503, 504 ...).
        message: what was received, what was expected, how to fix it.
        type: the OpenAI error type (``invalid_request_error``, ``authentication_error``,
            ``permission_error``, ``server_error`` ...).
        param: the offending request field (``"model"``, ``"router.knob"``), or None.
        code: a machine-readable code (``"model_not_found"``), or None.

    Example:
        >>> ApiError(404, "unknown model 'x'", param="model", code="model_not_found").body()["error"]["param"]
        'model'
    """

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
