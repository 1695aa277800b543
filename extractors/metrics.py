"""Prometheus metrics of the extraction stage, registered once per registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from learnstream.core.metrics import MetricSet

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class ExtractMetrics(MetricSet):
    """Counters, gauges and histograms of pattern extraction, the pattern store and dataset."""

    patterns_extracted: Counter
    patterns_stored: Counter
    patterns_merged: Counter
    llm_failures: Counter
    llm_retries: Counter
    llm_fallbacks: Counter
    circuit_state: Gauge
    extract_seconds: Histogram
    redactions: Counter
    pattern_feedback: Counter
    dataset_lines: Gauge
    dataset_bytes: Gauge
    dataset_written: Counter
    dataset_duplicates: Counter
    dataset_torn_repairs: Counter
    candidates_refused: Counter
    gate_passed: Counter
    dataset_skipped: Counter

    @classmethod
    def _create(cls, r: CollectorRegistry) -> ExtractMetrics:
        p = "learnstream_"
        return cls(
            patterns_extracted=Counter(
                p + "patterns_extracted",
                "Patterns extracted from candidates, per extractor",
                ["extractor"],
                registry=r,
            ),
            patterns_stored=Counter(
                p + "patterns_stored",
                "Pattern store upserts by result (new, merged, duplicate)",
                ["status"],
                registry=r,
            ),
            patterns_merged=Counter(
                p + "patterns_merged",
                "Extracted patterns merged into an existing one, per extractor",
                ["extractor"],
                registry=r,
            ),
            llm_failures=Counter(
                p + "extract_llm_failures",
                "LLM extractions that failed (then done by the heuristic), per kind",
                ["kind"],
                registry=r,
            ),
            llm_retries=Counter(
                p + "extract_llm_retries",
                "LLM requests retried, per kind of failure",
                ["kind"],
                registry=r,
            ),
            llm_fallbacks=Counter(
                p + "extract_llm_fallbacks",
                "Candidates the heuristic extracted because the LLM failed or the circuit was open",
                registry=r,
            ),
            circuit_state=Gauge(
                p + "extract_llm_circuit_state",
                "LLM circuit breaker: 0 closed, 1 half-open, 2 open",
                registry=r,
            ),
            extract_seconds=Histogram(
                p + "extract_seconds",
                "Time to extract one pattern, per extractor",
                ["extractor"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            redactions=Counter(
                p + "extract_redactions",
                "Secrets redacted from candidates and patterns, per kind",
                ["kind"],
                registry=r,
            ),
            pattern_feedback=Counter(
                p + "pattern_feedback",
                "Pattern feedback by effect (up, down, neutral, duplicate, unknown)",
                ["effect"],
                registry=r,
            ),
            dataset_lines=Gauge(p + "dataset_lines", "Examples in the JSONL dataset", registry=r),
            dataset_bytes=Gauge(p + "dataset_bytes", "Size of the JSONL dataset", registry=r),
            dataset_written=Counter(
                p + "dataset_examples_written", "Dataset examples appended", registry=r
            ),
            dataset_duplicates=Counter(
                p + "dataset_duplicates_skipped",
                "Dataset examples skipped as duplicates (same messages)",
                registry=r,
            ),
            dataset_torn_repairs=Counter(
                p + "dataset_torn_repairs",
                "Torn trailing lines truncated away when opening the dataset",
                registry=r,
            ),
            candidates_refused=Counter(
                p + "candidates_refused",
                "Candidates refused by the substance gate (no pattern, no example), per reason "
                "and decider (rules, llm); each is logged in the refusals JSONL",
                ["reason", "decided_by"],
                registry=r,
            ),
            gate_passed=Counter(
                p + "gate_passed",
                "Candidates the substance gate let through, per basis (code, commands, steps, "
                "explanation; the first that applied)",
                ["basis"],
                registry=r,
            ),
            dataset_skipped=Counter(
                p + "dataset_examples_skipped",
                "Dataset examples skipped by the balance (near_duplicate, pattern_cap); their "
                "patterns are still learned",
                ["reason"],
                registry=r,
            ),
        )

    def set_circuit(self, state: str) -> None:
        """Record the circuit breaker's state by name (closed, half_open, open)."""
        self.circuit_state.set(CIRCUIT_VALUES.get(state, 0))
