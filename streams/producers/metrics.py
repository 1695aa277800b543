"""Prometheus metrics of the producers, on an injectable `CollectorRegistry`."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from learnstream.core.metrics import MetricSet


@dataclass(frozen=True)
class ProducerMetrics(MetricSet):
    """Counters and gauges shared by every producer on one registry."""

    emitted: Counter
    delivered: Counter
    failed: Counter
    spooled: Counter
    spool_rejected: Counter
    dead_lettered: Counter
    possibly_duplicated: Counter
    secrets_redacted: Counter
    spool_bytes: Gauge
    spool_records: Gauge

    @classmethod
    def _create(cls, r: CollectorRegistry) -> ProducerMetrics:
        p = "learnstream_producer_"
        return cls(
            emitted=Counter(p + "emitted", "Events handed to emit()", ["source"], registry=r),
            secrets_redacted=Counter(
                p + "secrets_redacted",
                "Secrets replaced by [REDACTED:<kind>] before sending, per kind",
                ["source", "kind"],
                registry=r,
            ),
            delivered=Counter(
                p + "delivered", "Records acknowledged by the broker", ["source"], registry=r
            ),
            failed=Counter(
                p + "failed", "Records not delivered anywhere", ["source", "reason"], registry=r
            ),
            spooled=Counter(
                p + "spooled", "Records written to the on-disk spool", ["source"], registry=r
            ),
            spool_rejected=Counter(
                p + "spool_rejected", "Records refused by a full spool", ["source"], registry=r
            ),
            dead_lettered=Counter(
                p + "dead_lettered",
                "Invalid events sent to telemetry.dlq",
                ["source", "stage"],
                registry=r,
            ),
            possibly_duplicated=Counter(
                p + "possibly_duplicated",
                "In-flight records that timed out and were spooled (may reach the topic twice)",
                ["source"],
                registry=r,
            ),
            spool_bytes=Gauge(
                p + "spool_bytes", "Unsent bytes in the spool", ["spool"], registry=r
            ),
            spool_records=Gauge(
                p + "spool_records", "Unsent records in the spool", ["spool"], registry=r
            ),
        )
