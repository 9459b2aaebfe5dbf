"""Prometheus metrics of the server (text exposition at ``/metrics``), via ``prometheus_client``.

Each app gets its own registry, so several servers (or tests) in one process never share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..session import QueryResult

# seconds: 0.5 ms .. 10 s, roughly x2.5 per bucket (per-phase times span four decades)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What an operator watches: per-phase latency, sessions, batch sizes, errors by kind."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, max_batch: int, active_sessions: Callable[[], int], queued: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.phase = Histogram(
            "dcssa_stroke_phase_seconds",
            "Time per stroke in each phase (rasterise, preprocess, queue, encode, head, search, total).",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "dcssa_encoder_batch_size",
            "Strokes per sketch-encoder call (dynamic batching).",
            buckets=tuple(sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, max_batch})),
            registry=r,
        )
        self.strokes = Counter("dcssa_strokes", "Strokes applied.", registry=r)
        self.errors = Counter("dcssa_errors", "Requests answered with an error, by kind.", ["kind"], registry=r)
        self.dropped = Counter(
            "dcssa_sessions_dropped", "Sessions removed, by reason (expired, evicted, deleted).", ["reason"], registry=r
        )
        self.created = Counter("dcssa_sessions_created", "Sessions opened.", registry=r)
        self.rebuild = Histogram(
            "dcssa_session_rebuild_seconds",
            "Shared store: time to restore a session not in this replica's cache (canvas from its strokes).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store = Histogram(
            "dcssa_store_seconds",
            "Shared store: time per operation spent on it (read, load, versioned commit; not the stroke itself).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            "dcssa_store_conflicts", "Shared store: commits refused because another replica changed the session "
            "first (the operation is then re-applied on the new state).", registry=r)
        Gauge("dcssa_active_sessions", "Sessions held in memory.", registry=r).set_function(active_sessions)
        Gauge("dcssa_encoder_queue", "Strokes waiting for the encoder.", registry=r).set_function(queued)

    def observe_stroke(self, result: QueryResult) -> None:
        self.strokes.inc()
        for name, ms in result.timings.items():
            self.phase.labels(name).observe(ms / 1e3)

    def observe_rebuild(self, ms: float) -> None:
        self.rebuild.observe(ms / 1e3)

    def observe_batch(self, size: int, _encode_ms: float) -> None:
        self.batch.observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
