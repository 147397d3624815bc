"""The routing service: what the proxy holds and how it decides one request (DESIGN §9).

:class:`RoutingService` holds the router, the config, the micro-batcher, the score cache, session
affinity, solved budgets and certified floors, the client tokens, the metrics, the decision log and
the shared upstream client; ``create_app`` puts one on ``app.state.service`` and the HTTP routes
(``serve/routes.py``) read it from there. Nothing here imports FastAPI. The decision cache, sessions
and budgets live in its :class:`~prefill_router.serve.state.State`: in process, or in Redis shared
by every replica (``ServeConfig.state``).

A request is scored (cached, micro-batched, within ``score_timeout_s``) and decided by its
profile's floor or policy, or by the request's ``router`` field; a scoring failure goes to the
fallback target.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from prefill_router.errors import ApiError, ConfigError, DataError, UnknownTargetError
from prefill_router.policy import DEFAULT_KNOBS, Budget, Decision, FloorCertificate, QualityFloor, RoutePlan
from prefill_router.serve.batcher import MicroBatcher, QueueFullError, WorkerThread
from prefill_router.serve.cache import LruCache, TextHasher
from prefill_router.serve.config import DEFAULT_PROFILE, Client, Profile, ServeConfig
from prefill_router.serve.decision_log import DecisionLog
from prefill_router.serve.metrics import Metrics
from prefill_router.serve.protocol import Overrides, Routed
from prefill_router.serve.state import BUDGETS_KEPT, open_state
from prefill_router.serve.upstream import new_client

if TYPE_CHECKING:
    from starlette.requests import Request

    from prefill_router.policy import Router

log = logging.getLogger("prefill_router.serve")
_WARM_RETRY_S = 30.0  # after a failed warm-up, how long requests go straight to the fallback


class _UnscoredError(Exception):
    """Scoring did not give probabilities: ``kind`` labels the fallback metric."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class RoutingService:
    """The proxy's state: router, config, micro-batcher, caches, metrics, upstream client."""

    def __init__(self, router: Router, config: ServeConfig, decision_log: Path | None = None) -> None:
        self.router = router
        self.config = config
        self.metrics = Metrics()
        self.hash = TextHasher(config.cache_key)
        self.state = open_state(router, config, self.metrics)
        self.batcher = MicroBatcher(
            router.predict_proba, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue, on_batch=self.metrics.on_batch,
        )  # fmt: skip
        self.client: httpx.AsyncClient | None = None
        self.ready = False
        self.draining = False
        self.warm_error: str | None = None
        self._warm_at = -_WARM_RETRY_S
        self._warm_task: asyncio.Task[None] | None = None
        self._certificates: LruCache[FloorCertificate] = LruCache(BUDGETS_KEPT)
        self._solver = WorkerThread("prefill-router-budget")  # μ solves: off the loop, one at a time
        self._clients = [(client.token_sha256, client) for client in config.all_clients()]
        self._anonymous = Client("anonymous", "", config.client_rights)
        self.decision_log: DecisionLog | None = None
        if decision_log is not None:
            self.decision_log = DecisionLog(
                decision_log, max_bytes=config.decision_log_max_bytes, backups=config.decision_log_backups,
                on_drop=self.metrics.decision_log_dropped.inc,
            )  # fmt: skip

    # ------------------------------------------------------------------ clients
    def authorize(self, request: Request) -> Client:
        """The client a request's bearer token belongs to (anonymous when no token is configured).

        Raises:
            ApiError: 401 for a missing or unknown token.
        """
        if not self._clients:
            return self._anonymous
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            raise ApiError(401, "missing client token: send 'Authorization: Bearer <token>'",
                           type="authentication_error", code="missing_api_key")  # fmt: skip
        # Digest against digest, every token compared: neither its length nor its rank leaks.
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for known, client in self._clients:
            if hmac.compare_digest(digest, known) and found is None:
                found = client
        if found is None:
            raise ApiError(401, "invalid client token", type="authentication_error", code="invalid_api_key")
        return found

    # ------------------------------------------------------------------ routing
    async def route(self, text: str, profile: Profile, overrides: Overrides) -> Routed:
        """Score (cached, micro-batched) and decide; a scoring failure goes to the fallback target."""
        started = time.perf_counter()
        key = self.hash(text)
        found = await self.state.get_scores(key)
        if found is None:
            self.metrics.cache_misses.inc()
            try:
                p = await self._score(text)
            except _UnscoredError as exc:
                return self._fallback(overrides, exc)
            await self.state.put_scores(key, p)
        else:
            p, store = found
            self.metrics.cache_hits.labels(store).inc()
        c = self.router.costs([text])[0]
        floor = self._floor(profile, overrides)
        try:
            if floor is not None:
                certificate = await self._certificate(floor, overrides)
                plan = RoutePlan.keeping(certificate, overrides.allowed, overrides.max_cost_usd)
            else:
                policy, knob = await self._policy(profile, overrides)
                plan = RoutePlan(policy, knob, overrides.allowed, overrides.max_cost_usd)
            decision = plan.decide(p, c, self.router.targets)
        except (ConfigError, UnknownTargetError) as exc:
            raise ApiError(400, str(exc), param="router") from exc
        self.metrics.score_seconds.observe(time.perf_counter() - started)
        return Routed(decision, "policy", found is not None)

    async def _score(self, text: str) -> np.ndarray:
        """The text's probabilities within the scoring deadline, or :class:`_UnscoredError`."""
        if self.warm_error is not None:  # the encoder did not load: no batch reloads it
            self._retry_warm_up()
            raise _UnscoredError("encoder", "scoring failed (the encoder did not warm up)")
        self.metrics.encoder_queue.set(self.batcher.waiting)
        try:
            async with asyncio.timeout(self.config.score_timeout_s):
                p = await self.batcher.score(text)
        except TimeoutError:
            raise _UnscoredError(
                "deadline", f"scoring failed (no score within {self.config.score_timeout_s:g} s)"
            ) from None
        except QueueFullError:
            raise _UnscoredError(
                "overloaded", f"scoring failed ({self.batcher.max_queue} prompts already waiting)"
            ) from None
        except Exception as exc:  # the encoder failed on this text
            raise _UnscoredError("encoder", f"scoring failed ({type(exc).__name__})") from exc
        if not np.all(np.isfinite(p)):
            raise _UnscoredError("encoder", "scoring failed (non-finite probabilities)")
        return p

    def _floor(self, profile: Profile, overrides: Overrides) -> QualityFloor | None:
        """The floor this request keeps: its own, else its profile's (at a request's ``delta``)
        unless it asks for a policy, knob or budget of its own."""
        if overrides.floor is not None:
            return overrides.floor
        asks_policy = overrides.policy is not None or overrides.knob is not None
        if profile.floor is None or asks_policy or overrides.budget_usd is not None:
            if overrides.delta is not None:
                raise ApiError(
                    400, "router.delta is the risk of a quality floor; this request keeps none",
                    param="router.delta",
                )  # fmt: skip
            return None
        if profile.floor == DEFAULT_PROFILE.floor and not self.router.floors_available:
            return None  # a router without labelled calibration rows: argmax, as it said at start
        return profile.floor if overrides.delta is None else replace(profile.floor, delta=overrides.delta)

    async def _certificate(self, floor: QualityFloor, overrides: Overrides) -> FloorCertificate:
        """The floor's certificate (certified off the event loop once, then kept)."""
        key = repr(floor)
        certificate = self._certificates.get(key)
        if certificate is None:
            param = "router.within" if overrides.floor is not None else "model"
            try:
                certify = self.router.certify
                certificate = await self._solver.run(lambda: certify(floor))
            except (ConfigError, DataError) as exc:
                raise ApiError(400, f"{param}: {exc}", param=param) from exc
            self._certificates.put(key, certificate)
        return certificate

    async def _policy(self, profile: Profile, overrides: Overrides) -> tuple[str, float]:
        if overrides.budget_usd is not None:
            budget = overrides.budget_usd
            mu = await self.state.get_mu(repr(budget))
            if mu is None:
                try:
                    solve = self.router.solve_budget
                    mu = await self._solver.run(lambda: solve(Budget(usd_per_request=budget)).mu)
                except (ConfigError, DataError) as exc:
                    raise ApiError(400, f"router.budget_usd: {exc}", param="router.budget_usd") from exc
                await self.state.put_mu(repr(budget), mu)
            return "budget", mu
        policy = overrides.policy or profile.policy
        if overrides.knob is not None:
            knob = overrides.knob
        else:
            knob = profile.knob if policy == profile.policy else DEFAULT_KNOBS[policy]
        try:
            from prefill_router.policy import check_knob

            return policy, check_knob(policy, knob)
        except ConfigError as exc:
            raise ApiError(400, f"router.knob: {exc}", param="router.knob") from exc

    def _fallback(self, overrides: Overrides, failure: _UnscoredError) -> Routed:
        chain = self.chain(None, overrides)
        if not chain:
            raise ApiError(
                503, f"the router could not score this request ({failure.reason}) and no fallback "
                "target is configured", type="server_error", code="router_unavailable",
            ) from failure  # fmt: skip
        log.warning("%s; using the fallback target %s", failure.reason, chain[0])
        self.metrics.fallbacks.labels(failure.kind).inc()
        return self.fixed(chain[0], "fallback", f"{failure.reason}; the fallback target")

    def fixed(self, target: str, source: str, reason: str) -> Routed:
        """A decision not made by the policy (pinned, session, fallback)."""
        index = self.router.targets.index(target)
        decision = Decision(target, index, source, 0.0, {}, {}, (target,), reason)
        return Routed(decision, source)

    def chain(self, first: str | None, overrides: Overrides) -> list[str]:
        """``first`` then the fallback chain, within the request's allowed targets."""
        names = ([first] if first else []) + [t for t in self.config.fallback if t != first]
        if overrides.allowed is not None:
            names = [t for t in names if t == first or t in overrides.allowed]
        return names

    async def session_target(self, key: str) -> str | None:
        """The target that last answered a session (None: none, or not one of the router's)."""
        target = await self.state.get_session(key)
        return target if target in self.router.targets else None

    async def remember_session(self, key: str, target: str) -> None:
        """Keep the target that answered a session (in every replica's reach with Redis state)."""
        await self.state.put_session(key, target)

    def session_fits(self, target: str, text: str, overrides: Overrides) -> bool:
        """Whether a session's earlier target is within this request's allowed targets and cost cap."""
        if overrides.allowed is not None and target not in overrides.allowed:
            return False
        if overrides.max_cost_usd is None:
            return True
        cost = float(self.router.costs([text])[0][self.router.targets.index(target)])
        return cost <= overrides.max_cost_usd

    # ------------------------------------------------------------------ lifecycle
    def log_decision(self, record: dict[str, Any]) -> None:
        """Queue one JSONL line (hashes, never text) when a decision log is configured."""
        if self.decision_log is not None:
            self.decision_log.write(record)

    async def warm(self) -> None:
        """Load the encoder and run one forward; /ready turns true when it succeeds."""
        self._warm_at = time.monotonic()
        try:
            await self.batcher.run_in_thread(lambda: self.router.predict_proba(["Warm up the encoder."]))
        except Exception as exc:
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.error("encoder warm-up failed: %s", self.warm_error)
            return
        self.warm_error = None
        self.ready = True

    def _retry_warm_up(self) -> None:
        running = self._warm_task is not None and not self._warm_task.done()
        if not running and time.monotonic() - self._warm_at >= _WARM_RETRY_S:
            self._warm_task = asyncio.get_running_loop().create_task(self.warm())

    def start_draining(self) -> None:
        """Stop taking requests (503) while those in flight finish; /ready says so."""
        self.draining = True
        self.ready = False

    async def start(self) -> None:
        """Connect the state, open the upstream client, start the batcher, warm the encoder (in the
        background). Without ``cache_key``, the HMAC key is the one the state shares, if any."""
        shared_key = await self.state.start()
        if self.config.cache_key is None and shared_key is not None:
            self.hash = TextHasher(shared_key)
        self.client = new_client()
        self.batcher.start()
        self._warm_task = asyncio.get_running_loop().create_task(self.warm())

    async def stop(self) -> None:
        """Stop the warm-up, the batcher, the client, the state and the decision log."""
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
        await self.batcher.stop()
        self._solver.stop()
        if self.client is not None:
            await self.client.aclose()
        await self.state.stop()
        if self.decision_log is not None:
            self.decision_log.close()
