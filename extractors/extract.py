"""The extractor facade: redact, then LLM when configured and available, else the heuristic.

Any LLM failure (transport, timeout, 5xx, invalid output, open circuit, even a bug) falls back
to the deterministic heuristic, so every candidate yields a pattern.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

from extractors.config import ExtractSettings
from extractors.heuristic import heuristic_pattern
from extractors.llm import BreakerState, CircuitBreaker, LLMError, LLMExtractor
from extractors.metrics import ExtractMetrics
from extractors.redact import redact_candidate, redact_pattern
from schemas.interaction import ScoredInteraction
from schemas.pattern import Pattern

log = logging.getLogger("learnstream.extract")


@dataclass(frozen=True)
class Extraction:
    """One candidate's extraction: the redacted candidate, its pattern, any LLM failure."""

    candidate: ScoredInteraction
    pattern: Pattern
    llm_error: str | None = None


class Extractor:
    """Turns candidates into patterns; thread-safe (the stage calls it from a thread pool)."""

    def __init__(
        self,
        settings: ExtractSettings,
        metrics: ExtractMetrics,
        llm: LLMExtractor | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        if llm is None and settings.llm_base_url:
            breaker = CircuitBreaker(
                settings.breaker_failure_threshold,
                settings.breaker_reset_s,
                on_change=lambda state: metrics.set_circuit(state.value),
            )
            llm = LLMExtractor(
                settings,
                breaker=breaker,
                on_retry=lambda kind: metrics.llm_retries.labels(kind).inc(),
            )
        self.llm = llm
        metrics.set_circuit(BreakerState.CLOSED.value)

    def close(self) -> None:
        """Release the LLM client's connections."""
        if self.llm is not None:
            self.llm.close()

    def redact(self, candidate: ScoredInteraction) -> ScoredInteraction:
        """The candidate with secrets redacted (counted per kind)."""
        counts: Counter[str] = Counter()
        redacted = redact_candidate(candidate, counts)
        for kind, n in counts.items():
            self.metrics.redactions.labels(kind).inc(n)
        return redacted

    def extract(self, candidate: ScoredInteraction) -> Extraction:
        """Redact, then extract with the LLM if possible, else (or on failure) the heuristic."""
        redacted = self.redact(candidate)
        error: str | None = None
        if self.llm is not None:
            started = time.perf_counter()
            try:
                pattern = self.llm.extract(redacted)
            except LLMError as exc:
                error = exc.kind
                if exc.kind != "circuit_open":
                    log.warning("LLM extraction of %s failed: %s", candidate.event_id, exc)
            except Exception as exc:  # a bug must not lose the candidate either
                error = "error"
                log.exception("LLM extraction of %s crashed: %s", candidate.event_id, exc)
            else:
                elapsed = time.perf_counter() - started
                self.metrics.extract_seconds.labels("llm").observe(elapsed)
                return self._done(redacted, pattern, None)
            self.metrics.llm_failures.labels(error).inc()
            self.metrics.llm_fallbacks.inc()
        started = time.perf_counter()
        pattern = heuristic_pattern(redacted)
        self.metrics.extract_seconds.labels("heuristic").observe(time.perf_counter() - started)
        return self._done(redacted, pattern, error)

    def _done(self, redacted: ScoredInteraction, pattern: Pattern, error: str | None) -> Extraction:
        counts: Counter[str] = Counter()
        pattern = redact_pattern(pattern, counts)  # the model could echo a secret we missed
        for kind, n in counts.items():
            self.metrics.redactions.labels(kind).inc(n)
        self.metrics.patterns_extracted.labels(pattern.extractor).inc()
        return Extraction(candidate=redacted, pattern=pattern, llm_error=error)
