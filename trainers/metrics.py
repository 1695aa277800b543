"""Prometheus metrics of the training loop, registered on an injectable CollectorRegistry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from learnstream.core.metrics import MetricSet

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)


@dataclass(frozen=True)
class TrainingMetrics(MetricSet):
    """Training runs, durations, active model quality and hot-swap notifications."""

    runs: Counter
    """``learnstream_training_runs_total{base_model, status}``; status as in TrainingResult."""
    duration: Histogram
    """``learnstream_training_duration_seconds{stage}``: snapshot/train/evaluate/.../total."""
    active_eval_loss: Gauge
    """``learnstream_active_model_eval_loss{base_model}`` at its promotion."""
    active_perplexity: Gauge
    """``learnstream_active_model_perplexity{base_model}`` at its promotion."""
    active_version: Gauge
    """``learnstream_active_model_version{base_model}`` (0: the bare base model)."""
    last_improvement: Gauge
    """``learnstream_training_relative_improvement{base_model}`` of the last evaluated run."""
    hotswap: Counter
    """``learnstream_hotswap_notifications_total{kind, outcome}``."""

    @classmethod
    def _create(cls, r: CollectorRegistry) -> TrainingMetrics:
        p = "learnstream_"
        return cls(
            runs=Counter(
                p + "training_runs",
                "Training jobs by outcome",
                ["base_model", "status"],
                registry=r,
            ),
            duration=Histogram(
                p + "training_duration_seconds",
                "Duration of training job stages",
                ["stage"],
                buckets=_DURATION_BUCKETS,
                registry=r,
            ),
            active_eval_loss=Gauge(
                p + "active_model_eval_loss",
                "Eval loss of the active adapter when it was promoted (lower is better)",
                ["base_model"],
                registry=r,
            ),
            active_perplexity=Gauge(
                p + "active_model_perplexity",
                "Eval perplexity of the active adapter when it was promoted",
                ["base_model"],
                registry=r,
            ),
            active_version=Gauge(
                p + "active_model_version",
                "Active adapter version (0: the bare base model)",
                ["base_model"],
                registry=r,
            ),
            last_improvement=Gauge(
                p + "training_relative_improvement",
                "Relative eval-loss improvement of the last candidate over the active model",
                ["base_model"],
                registry=r,
            ),
            hotswap=Counter(
                p + "hotswap_notifications",
                "Inference-server notifications by kind and outcome",
                ["kind", "outcome"],
                registry=r,
            ),
        )
