"""Stage 7: the OpenAI-compatible routing proxy (``prefill-router serve``), DESIGN §9.

Modules: ``config`` (serve.yaml and client rights, as pydantic models), ``protocol`` (the request
and response bodies as pydantic models, the ``router`` options, a decision's headers and JSON),
``batcher`` (micro-batched encoder forwards), ``cache`` (keyed-hash LRU), ``upstream`` (forwarding
and fallback), ``decision_log`` (JSONL off the event loop, rotated), ``metrics`` (Prometheus),
``state`` (decision cache, sessions, budgets: in process) and ``redis_state`` (the same shared by
replicas through Redis, ``--state redis://...``), ``service`` (``RoutingService``: the proxy's
state and decisions),
``routes`` (the HTTP handlers, an ``APIRouter`` reading ``app.state``), ``middleware`` (request
counting, error handlers) and ``app`` (``create_app`` assembles them). FastAPI is imported only by
``app`` and ``routes``, so ``from prefill_router.serve.config import ServeConfig`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from prefill_router.serve.app import create_app

        return create_app
    if name == "ServeConfig":
        from prefill_router.serve.config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'prefill_router.serve' has no attribute {name!r}")
