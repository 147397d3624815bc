"""The ``prefill-router`` command line: thin typer commands, one module per pipeline stage.

Errors of ours become one line on stderr and the exit code of their class
(:mod:`prefill_router.errors`); ``--debug`` shows the traceback instead.
"""

from prefill_router.cli import _data, _encode, _evaluate, _route, _serve, _train  # noqa: F401 (registers the commands)
from prefill_router.cli._app import app, main, run

__all__ = ["app", "main", "run"]
