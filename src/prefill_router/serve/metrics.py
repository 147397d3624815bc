"""Prometheus metrics on a per-app registry (never the global one, so many apps can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The proxy's counters and latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prefill_router_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.decisions = Counter(
            "prefill_router_decisions",
            "Routing decisions by target and source",
            ["target", "source"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "prefill_router_upstream_requests", "Upstream calls by target and outcome", ["target", "outcome"],
            registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "prefill_router_fallbacks",
            "Fallbacks by kind (encoder, deadline, overloaded, upstream)",
            ["kind"],
            registry=r,
        )
        self.errors = Counter(
            "prefill_router_errors", "Error answers by status and OpenAI error code", ["status", "code"],
            registry=r,
        )  # fmt: skip
        self.stream_errors = Counter(
            "prefill_router_stream_errors", "Streams the upstream broke (interrupted, truncated) by target",
            ["target", "kind"], registry=r,
        )  # fmt: skip
        self.decision_log_dropped = Counter(
            "prefill_router_decision_log_dropped", "Decision log lines dropped (writer behind)", registry=r
        )
        self.encoder_queue = Gauge(
            "prefill_router_encoder_queue", "Prompts waiting for the encoder", registry=r
        )
        self.in_flight = Gauge("prefill_router_in_flight", "Requests being answered", registry=r)
        self.cache_hits = Counter(
            "prefill_router_cache_hits", "Decision cache hits by where the entry was found (local, redis)",
            ["store"], registry=r,
        )  # fmt: skip
        self.cache_misses = Counter("prefill_router_cache_misses", "Decision cache misses", registry=r)
        self.redis_errors = Counter(
            "prefill_router_redis_errors", "Redis state calls that failed (connection, timeout, error reply) "
            "by operation; those requests used the in-process state", ["operation"], registry=r,
        )  # fmt: skip
        self.state_degraded = Gauge(
            "prefill_router_state_degraded", "1 while the Redis state fails and the in-process state answers",
            registry=r,
        )  # fmt: skip
        self.encode_seconds = Histogram(
            "prefill_router_encode_seconds",
            "Encoder forward + scoring of one batch",
            buckets=_FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "prefill_router_batch_size", "Prompts per encoder forward", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )  # fmt: skip
        self.score_seconds = Histogram(
            "prefill_router_score_seconds", "Routing one request (queue + encode + policy)", buckets=_FAST,
            registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            "prefill_router_upstream_seconds", "Upstream call until response headers", ["target"],
            buckets=_SLOW, registry=r,
        )  # fmt: skip

    def on_batch(self, size: int, seconds: float) -> None:
        """Record one encoder forward."""
        self.batch_size.observe(size)
        self.encode_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
