"""The proxy's state shared through Redis (``serve --state redis://HOST:PORT/DB``), for several replicas.

:class:`RedisState` keeps, under a namespace of the router artifact's fingerprint (replicas serving
another artifact never read these values):

==========================  ==========================================  ===========================
key                         value                                       kept
==========================  ==========================================  ===========================
``NS:p:<text HMAC>``        a text's probabilities, float64 per target   ``state_ttl_s``
``NS:s:<session HMAC>``     the target that last answered the session    ``session_ttl_s``, renewed
``NS:sessions``             sorted set of session keys by last write     ``SESSIONS_KEPT``, TTL
``NS:mu:<budget_usd>``      a budget's solved μ                          ``state_ttl_s``
``prefill-router:hmac-key`` the HMAC key replicas share (unless          until deleted
                            ``cache_key_env`` gives one)
==========================  ==========================================  ===========================

One connection pool per process (redis-py's asyncio client, hiredis parser), every call under
``state_timeout_s``. A failed call (connection, timeout, an error reply) is counted in
``prefill_router_redis_errors_total{operation}``; the request goes on with the in-process
:class:`~prefill_router.serve.state.LocalState` (which also holds the cache and budgets in front of
Redis: probabilities and μ never change for a key), and Redis is tried again after ``RETRY_S``.
``/health`` says ``degraded`` with the last error until a call succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import AuthenticationError, RedisError

from prefill_router.serve.config import redact_password
from prefill_router.serve.state import SESSIONS_KEPT, Found, LocalState, State

if TYPE_CHECKING:
    from prefill_router.policy import Router
    from prefill_router.serve.metrics import Metrics

log = logging.getLogger("prefill_router.serve")
T = TypeVar("T")

RETRY_S = 1.0  # after a failed call, how long requests use the in-process state before trying Redis again
HMAC_KEY = "prefill-router:hmac-key"
_POOL_SIZE = 64  # connections per process; a call waits for a free one within its timeout
_FAILURES = (RedisError, OSError, TimeoutError)
# Set a session's target, index it by the server's clock (the index lives as long as its newest
# session), and drop the least recently written sessions past the bound (and index entries older
# than the TTL) in one round trip.
_PUT_SESSION = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]) / 1000)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
return 1
"""


class _DownError(Exception):
    """Redis did not answer this call (or is in its retry pause): use the local state."""


class RedisState(State):
    """Decision cache, sessions and budgets in Redis, the in-process ``local`` state in front and behind.

    Args:
        url: ``redis://[:PASSWORD@]HOST:PORT/DB`` (or ``rediss://``, ``unix://``).
        namespace: the key prefix (:func:`router_namespace`).
        n_targets: the length of a probability vector (others read from Redis are ignored).
        local: the in-process state used in front of Redis and whenever it fails.
        metrics: where failures are counted.
        timeout_s: the limit of every call.
        ttl_s: how long cache entries and budgets live; ``session_ttl_s``: sessions.
        cache: False when the decision cache is off (``cache_size: 0``).
        sessions_kept: the most sessions kept in Redis.
    """

    backend = "redis"

    def __init__(
        self, url: str, *, namespace: str, n_targets: int, local: LocalState, metrics: Metrics,
        timeout_s: float = 0.5, ttl_s: float = 86_400.0, session_ttl_s: float = 3_600.0, cache: bool = True,
        sessions_kept: int = SESSIONS_KEPT,
    ) -> None:  # fmt: skip
        self.url = url
        self.namespace = namespace
        self.n_targets = n_targets
        self.local = local
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.session_ttl_ms = max(1, round(session_ttl_s * 1000))
        self.cache = cache
        self.sessions_kept = sessions_kept
        self.error: str | None = None  # the last failure while degraded; None while Redis answers
        self.failures = 0
        self._retry_at = 0.0
        self._redis: Redis | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> bytes | None:
        """Open the pool and check Redis; the shared HMAC key (created by the first replica).

        An unreachable Redis, or one refusing the password, logs one line and leaves the state
        degraded (in-process) until a later call succeeds; it never raises.
        """
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=_POOL_SIZE, timeout=self.timeout_s, socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s, retry=None,
        )  # fmt: skip
        self._redis = Redis.from_pool(pool)  # closing the client closes its pool
        self._put_session = self._redis.register_script(_PUT_SESSION)
        try:
            async with asyncio.timeout(max(2.0, 4 * self.timeout_s)):
                await self._redis.set(HMAC_KEY, secrets.token_hex(32), nx=True)
                key = await self._redis.get(HMAC_KEY)
        except _FAILURES as exc:
            self._fail("start", exc)
            log.warning(
                "state: %s; routing with in-process state until it answers (--state-required refuses "
                "to start instead)", describe_failure(self.url, exc),
            )  # fmt: skip
            return None
        self.metrics.state_degraded.set(0)
        log.info("state: shared through Redis at %s (%s)", redact_password(self.url), self.namespace)
        return key if isinstance(key, bytes) and key else None

    async def stop(self) -> None:
        """Close the connections."""
        if self._redis is not None:
            await self._redis.aclose()

    def health(self) -> dict[str, Any]:
        """``backend``, ``status`` (``ok`` / ``degraded``), ``error`` (the last one, while degraded)
        and ``failures`` (every failed call since start)."""
        status = "ok" if self.error is None else "degraded"
        return {"backend": self.backend, "status": status, "error": self.error, "failures": self.failures}

    # ------------------------------------------------------------------ the state
    async def get_scores(self, key: str) -> Found | None:
        """The local entry, else Redis's (then kept locally), else None."""
        found = await self.local.get_scores(key)
        if found is not None or not self.cache:
            return found
        try:
            raw = await self._call("get_scores", lambda r: r.get(f"{self.namespace}:p:{key}"))
        except _DownError:
            return None
        p = self._probabilities(raw)
        if p is None:
            return None
        await self.local.put_scores(key, p)
        return p, "redis"

    async def put_scores(self, key: str, p: np.ndarray) -> None:
        """Cache ``p`` locally and in Redis."""
        await self.local.put_scores(key, p)
        if self.cache:
            value = np.asarray(p, dtype="<f8").tobytes()
            name = f"{self.namespace}:p:{key}"
            await self._quietly("put_scores", lambda r: r.set(name, value, px=self.ttl_ms))

    async def get_session(self, key: str) -> str | None:
        """Redis's entry (it is the one every replica writes), or the local one while Redis is down."""
        try:
            raw = await self._call("get_session", lambda r: r.get(f"{self.namespace}:s:{key}"))
        except _DownError:
            return await self.local.get_session(key)
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None

    async def put_session(self, key: str, target: str) -> None:
        """Remember the session's target locally and in Redis (TTL renewed, bounded)."""
        await self.local.put_session(key, target)
        keys = [f"{self.namespace}:s:{key}", f"{self.namespace}:sessions"]
        args: list[str | int] = [target, self.session_ttl_ms, self.sessions_kept]
        await self._quietly("put_session", lambda r: self._put_session(keys=keys, args=args, client=r))

    async def get_mu(self, key: str) -> float | None:
        """The local μ, else Redis's (then kept locally), else None."""
        mu = await self.local.get_mu(key)
        if mu is not None:
            return mu
        try:
            raw = await self._call("get_mu", lambda r: r.get(f"{self.namespace}:mu:{key}"))
        except _DownError:
            return None
        try:
            mu = float(raw) if raw is not None else None
        except ValueError:
            return None
        if mu is None or not np.isfinite(mu):
            return None
        await self.local.put_mu(key, mu)
        return mu

    async def put_mu(self, key: str, mu: float) -> None:
        """Keep a budget's μ locally and in Redis."""
        await self.local.put_mu(key, mu)
        await self._quietly("put_mu", lambda r: r.set(f"{self.namespace}:mu:{key}", repr(mu), px=self.ttl_ms))

    # ------------------------------------------------------------------ calls
    async def _call(self, operation: str, command: Callable[[Redis], Awaitable[T]]) -> T:
        """``command``'s result within the timeout, or :class:`_DownError` (the failure counted)."""
        assert self._redis is not None, "RedisState.start() has not run"
        if time.monotonic() < self._retry_at:
            raise _DownError
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await command(self._redis)
        except _FAILURES as exc:
            self._fail(operation, exc)
            raise _DownError from exc
        if self.error is not None:
            log.warning("state: Redis at %s answers again", redact_password(self.url))
            self.error = None
            self.metrics.state_degraded.set(0)
        return result

    async def _quietly(self, operation: str, command: Callable[[Redis], Awaitable[Any]]) -> None:
        """Run a write; a failure is counted and otherwise ignored (the local state has the value)."""
        with contextlib.suppress(_DownError):
            await self._call(operation, command)

    def _fail(self, operation: str, exc: BaseException) -> None:
        self.failures += 1
        self.metrics.redis_errors.labels(operation).inc()
        self.metrics.state_degraded.set(1)
        if self.error is None and operation != "start":
            log.warning(
                "state: Redis at %s failed (%s); answering from in-process state, trying again every %g s",
                redact_password(self.url), _reason(exc), RETRY_S,
            )  # fmt: skip
        self.error = f"{operation}: {_reason(exc)}"
        self._retry_at = time.monotonic() + RETRY_S

    def _probabilities(self, raw: Any) -> np.ndarray | None:
        """The vector stored for a text, or None for a value that is not one (another writer's key)."""
        if not isinstance(raw, bytes) or len(raw) != 8 * self.n_targets:
            return None
        p = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        return p if bool(np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))) else None


def _reason(exc: BaseException) -> str:
    text = str(exc) or "no answer within the timeout"
    return f"{type(exc).__name__}: {text}"


def describe_failure(url: str, exc: BaseException) -> str:
    """One line saying why Redis at ``url`` (password hidden) could not be used."""
    shown = redact_password(url)
    if isinstance(exc, AuthenticationError):
        return (
            f"Redis at {shown} refused the credentials ({exc}); give the password in the URL: "
            "redis://:PASSWORD@HOST:PORT/DB"
        )
    return f"cannot use Redis at {shown} ({_reason(exc)})"


def probe(url: str, timeout_s: float) -> str | None:
    """Why Redis at ``url`` cannot be used now (one line), or None when it answers a PING."""

    async def ping() -> str | None:
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None)
        try:
            async with asyncio.timeout(max(2.0, 4 * timeout_s)):
                await client.ping()
        except _FAILURES as exc:
            return describe_failure(url, exc)
        finally:
            await client.aclose()
        return None

    return asyncio.run(ping())


def router_namespace(router: Router) -> str:
    """``prefill-router:<16 hex>``: the fingerprint of the artifact's document and arrays."""
    from prefill_router.train.artifact import router_document

    meta, arrays = router_document(router)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return f"prefill-router:{digest.hexdigest()[:16]}"
