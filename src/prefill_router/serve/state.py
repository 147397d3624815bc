"""What the proxy keeps between requests: the decision cache, session affinity, solved budgets.

One small interface, :class:`State`, with two implementations chosen at start by
:func:`open_state` from ``ServeConfig.state``:

- :class:`LocalState`: in-process LRUs, one replica's own (the default);
- :class:`~prefill_router.serve.redis_state.RedisState`: shared by every replica through Redis
  (``state: redis://HOST:PORT/DB``), falling back to a :class:`LocalState` whenever Redis fails, so
  no request ever fails because Redis is down.

Keys are never texts: a cache key is the service's HMAC of the routing text, a session key the HMAC
of the client and session id, a budget key ``repr(budget_usd)``. Values: the probability vector of
a text (one per target), the target a session was answered by, the solved μ of a budget.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router.serve.cache import LruCache

if TYPE_CHECKING:
    from prefill_router.policy import Router
    from prefill_router.serve.config import ServeConfig
    from prefill_router.serve.metrics import Metrics

__all__ = ["SESSIONS_KEPT", "LocalState", "State", "open_state"]

SESSIONS_KEPT = 100_000  # session affinity entries, least recently written out (locally and in Redis)
BUDGETS_KEPT = 1024  # solved μ per distinct budget_usd kept in process, least recently used out

#: A cached probability vector and where it was found ("local" or "redis").
Found = tuple[np.ndarray, str]


class State(ABC):
    """The proxy's state between requests; every method is safe to call when the backend is down."""

    backend: str  # "local" or "redis"

    async def start(self) -> bytes | None:
        """Connect (when there is anything to connect to); the HMAC key the backend shares, if any."""
        return None

    async def stop(self) -> None:  # noqa: B027  (optional: nothing to close in process)
        """Close connections."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """What ``/health`` says of the state (no I/O): ``backend`` and, for Redis, its status."""

    @abstractmethod
    async def get_scores(self, key: str) -> Found | None:
        """The cached probabilities of a text's key and where they were found, or None."""

    @abstractmethod
    async def put_scores(self, key: str, p: np.ndarray) -> None:
        """Cache a text's probabilities."""

    @abstractmethod
    async def get_session(self, key: str) -> str | None:
        """The target that last answered this session, or None."""

    @abstractmethod
    async def put_session(self, key: str, target: str) -> None:
        """Remember the target that answered this session."""

    @abstractmethod
    async def get_mu(self, key: str) -> float | None:
        """The solved μ of a budget, or None."""

    @abstractmethod
    async def put_mu(self, key: str, mu: float) -> None:
        """Keep a budget's solved μ."""


class LocalState(State):
    """In-process LRUs: ``cache_size`` decisions (0: no cache), sessions and budgets."""

    backend = "local"

    def __init__(self, cache_size: int, sessions_kept: int = SESSIONS_KEPT) -> None:
        self.cache: LruCache[np.ndarray] = LruCache(cache_size)
        self.sessions: LruCache[str] = LruCache(sessions_kept)
        self.mus: LruCache[float] = LruCache(BUDGETS_KEPT)

    def health(self) -> dict[str, Any]:
        """``{"backend": "local"}``."""
        return {"backend": self.backend}

    async def get_scores(self, key: str) -> Found | None:
        """The cached probabilities (found "local"), or None."""
        p = self.cache.get(key)
        return None if p is None else (p, "local")

    async def put_scores(self, key: str, p: np.ndarray) -> None:
        """Cache ``p`` (the least recently used entry out when full)."""
        self.cache.put(key, p)

    async def get_session(self, key: str) -> str | None:
        """The session's target, or None."""
        return self.sessions.get(key)

    async def put_session(self, key: str, target: str) -> None:
        """Remember the session's target."""
        self.sessions.put(key, target)

    async def get_mu(self, key: str) -> float | None:
        """The budget's μ, or None."""
        return self.mus.get(key)

    async def put_mu(self, key: str, mu: float) -> None:
        """Keep the budget's μ."""
        self.mus.put(key, mu)


def open_state(router: Router, config: ServeConfig, metrics: Metrics) -> State:
    """The state ``config.state`` names: Redis for a URL (``redis`` must be installed), else local.

    Raises:
        MissingDependencyError: a Redis URL without the ``redis`` package.
    """
    local = LocalState(config.cache_size)
    if config.state is None:
        return local
    import importlib.util

    from prefill_router.errors import MissingDependencyError

    if importlib.util.find_spec("redis") is None:
        raise MissingDependencyError(
            "state: a Redis URL needs the redis client; install it with: pip install 'prefill-router[redis]'"
        )
    from prefill_router.serve.redis_state import RedisState, router_namespace

    return RedisState(
        config.state, namespace=router_namespace(router), n_targets=len(router.targets), local=local,
        metrics=metrics, timeout_s=config.state_timeout_s, ttl_s=config.state_ttl_s,
        session_ttl_s=config.session_ttl_s, cache=config.cache_size > 0,
    )  # fmt: skip
