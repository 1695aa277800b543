"""Serving a process's Prometheus metrics."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar, cast

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from learnstream.core.settings import Settings

log = logging.getLogger("learnstream.metrics")
T = TypeVar("T")

_sets_lock = threading.Lock()
_sets: weakref.WeakKeyDictionary[CollectorRegistry, dict[type, Any]] = weakref.WeakKeyDictionary()


def metric_set(
    cls: type[T], registry: CollectorRegistry | None, create: Callable[[CollectorRegistry], T]
) -> T:
    """The one instance of a metrics class on ``registry`` (default: the global registry).

    prometheus_client refuses to register a metric name twice on a registry, so each metrics
    class builds its metrics once per registry, on first use, and shares them afterwards.
    """
    registry = registry or REGISTRY
    with _sets_lock:
        per_registry = _sets.setdefault(registry, {})
        found = per_registry.get(cls)
        if found is None:
            found = per_registry[cls] = create(registry)
        return cast(T, found)


class MetricSet:
    """Base of a metrics class: ``Cls.on(registry)`` gives its one instance on a registry.

    A subclass (a frozen dataclass of metrics) builds them all in ``_create(registry)``.
    """

    @classmethod
    def on(cls, registry: CollectorRegistry | None = None) -> Self:
        """The metrics registered on ``registry`` (the default registry when None)."""
        return metric_set(cls, registry, cls._create)

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> Self:
        raise NotImplementedError


def serve_metrics(settings: Settings, registry: CollectorRegistry | None = None) -> int | None:
    """Serve /metrics on ``LEARNSTREAM_METRICS_PORT`` if set; returns the port or None."""
    if settings.metrics_port is None:
        return None
    server, _ = start_http_server(settings.metrics_port, registry=registry or REGISTRY)
    port = int(server.server_port)
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
    return port


_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class StreamMetrics(MetricSet):
    """Metrics of the stream stages (score, extract, triggers), one set per registry."""

    events_consumed: Counter
    events_invalid: Counter
    dead_letters: Counter
    secrets_redacted: Counter
    value_score: Histogram
    factor: Histogram
    high_value: Counter
    stage_seconds: Histogram
    embedding_cache_hits: Counter
    embedding_cache_misses: Counter
    learnings_since_training: Gauge
    training_triggers: Counter
    window_success_rate: Gauge
    late_events: Counter
    watermark_forced: Counter
    watermark_held: Gauge
    watermark_hold_seconds: Histogram

    @classmethod
    def _create(cls, r: CollectorRegistry) -> StreamMetrics:
        p = "learnstream_"
        return cls(
            events_consumed=Counter(
                p + "events_consumed",
                "Telemetry events consumed",
                ["source", "event_type"],
                registry=r,
            ),
            events_invalid=Counter(
                p + "events_invalid",
                "Telemetry events that failed validation",
                ["source", "kind"],
                registry=r,
            ),
            secrets_redacted=Counter(
                p + "score_secrets_redacted",
                "Secrets the score stage replaced before storing or forwarding, per kind",
                ["source", "kind"],
                registry=r,
            ),
            dead_letters=Counter(p + "dlq", "Records sent to telemetry.dlq", ["stage"], registry=r),
            value_score=Histogram(
                p + "value_score",
                "Value score of scored interactions",
                ["source"],
                buckets=_SCORE_BUCKETS,
                registry=r,
            ),
            factor=Histogram(
                p + "value_factor",
                "Each factor of the value score",
                ["factor"],
                buckets=_SCORE_BUCKETS,
                registry=r,
            ),
            high_value=Counter(
                p + "high_value", "Interactions at or above the threshold", ["source"], registry=r
            ),
            stage_seconds=Histogram(
                p + "stage_seconds",
                "Time per batch in each stage step",
                ["stage", "step"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            embedding_cache_hits=Counter(
                p + "embedding_cache_hits", "Embedding cache hits", registry=r
            ),
            embedding_cache_misses=Counter(
                p + "embedding_cache_misses", "Embedding cache misses", registry=r
            ),
            learnings_since_training=Gauge(
                p + "learnings_since_training",
                "Learnings since the last training run",
                ["base_model"],
                registry=r,
            ),
            training_triggers=Counter(
                p + "training_triggers",
                "Training triggers emitted, by reason",
                ["base_model", "reason"],
                registry=r,
            ),
            window_success_rate=Gauge(
                p + "window_success_rate",
                "Success rate over the recent scored interactions (the quality rule's window)",
                ["base_model"],
                registry=r,
            ),
            late_events=Counter(
                p + "late_events",
                "Events that arrived after the watermark passed their time (kind=late: later "
                "events were scored without them, on every replay alike; kind=missed: an event "
                "that should have seen them was already scored, so a replay may differ)",
                ["source", "kind"],
                registry=r,
            ),
            watermark_forced=Counter(
                p + "watermark_forced",
                "Events scored by the bounded wait before their look-ups were known complete",
                ["source"],
                registry=r,
            ),
            watermark_held=Gauge(
                p + "watermark_held", "Events held for the watermark now", registry=r
            ),
            watermark_hold_seconds=Histogram(
                p + "watermark_hold_seconds",
                "Time from reading an event to its release by the watermark",
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
        )
