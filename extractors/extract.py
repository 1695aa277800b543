"""The extractor facade: redact, gate, then LLM when configured and available, else the heuristic.

The substance gate (`extractors.gate`) runs first, on the redacted candidate, for both
extractors: a candidate without reusable content (filler, a refusal, an echo of the question...)
is refused with a reason and makes no pattern. The LLM may refuse too: its prompt lets it
answer "no pattern" with a reason. Any LLM failure (transport, timeout, 5xx, invalid output,
open circuit, even a bug) falls back to the deterministic heuristic, so every candidate that
passes the gate yields a pattern.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

from extractors.gate import GateSettings, Verdict, assess
from extractors.heuristic import heuristic_pattern
from extractors.llm import BreakerState, CircuitBreaker, LLMError, LLMExtractor, NoPattern
from extractors.metrics import ExtractMetrics
from extractors.redact import redact_candidate, redact_pattern
from extractors.refusals import refusal_of
from learnstream.core.settings import ExtractSettings
from schemas.interaction import ScoredInteraction
from schemas.pattern import Pattern, Refusal

log = logging.getLogger("learnstream.extract")


@dataclass(frozen=True)
class Extraction:
    """One candidate's extraction: the redacted candidate, its pattern, any LLM failure.

    A refused candidate has no ``pattern`` and a ``refusal`` (kind ``pattern``) saying why;
    ``basis`` says what made an accepted one substantive (code, commands, steps, explanation).
    """

    candidate: ScoredInteraction
    pattern: Pattern | None
    llm_error: str | None = None
    refusal: Refusal | None = None
    basis: tuple[str, ...] = ()


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
        self.gate = GateSettings(
            min_informative_tokens=settings.gate_min_informative_tokens,
            max_repetition=settings.gate_max_repetition,
            max_echo_overlap=settings.gate_max_echo_overlap,
        )
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

    def assess(self, redacted: ScoredInteraction) -> Verdict:
        """The substance gate's verdict on a redacted candidate (passes when the gate is off)."""
        if not self.settings.gate:
            return Verdict(True, basis=("gate_off",))
        return assess(redacted, self.gate)

    def _refused(
        self, redacted: ScoredInteraction, verdict: Verdict, decided_by: str
    ) -> Extraction:
        assert verdict.reason is not None
        refusal = refusal_of(
            redacted,
            kind="pattern",
            reason=verdict.reason,
            detail=verdict.detail,
            decided_by=decided_by,
            measures=verdict.measures,
        )
        return Extraction(candidate=redacted, pattern=None, refusal=refusal)

    def extract(self, candidate: ScoredInteraction) -> Extraction:
        """Redact and gate, then extract with the LLM if possible, else (or on failure) the
        heuristic. A refused candidate comes back with ``pattern`` None and its refusal.
        """
        redacted = self.redact(candidate)
        verdict = self.assess(redacted)
        if not verdict.passed:
            return self._refused(redacted, verdict, "rules")
        error: str | None = None
        if self.llm is not None:
            started = time.perf_counter()
            try:
                pattern = self.llm.extract(redacted)
            except NoPattern as exc:
                self.metrics.extract_seconds.labels("llm").observe(time.perf_counter() - started)
                llm_verdict = Verdict(
                    False, "llm_no_pattern", exc.reason, measures=verdict.measures
                )
                return self._refused(redacted, llm_verdict, "llm")
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
                return self._done(redacted, pattern, None, verdict.basis)
            self.metrics.llm_failures.labels(error).inc()
            self.metrics.llm_fallbacks.inc()
        started = time.perf_counter()
        pattern = heuristic_pattern(redacted)
        self.metrics.extract_seconds.labels("heuristic").observe(time.perf_counter() - started)
        return self._done(redacted, pattern, error, verdict.basis)

    def _done(
        self,
        redacted: ScoredInteraction,
        pattern: Pattern,
        error: str | None,
        basis: tuple[str, ...],
    ) -> Extraction:
        counts: Counter[str] = Counter()
        pattern = redact_pattern(pattern, counts)  # the model could echo a secret we missed
        for kind, n in counts.items():
            self.metrics.redactions.labels(kind).inc(n)
        self.metrics.patterns_extracted.labels(pattern.extractor).inc()
        return Extraction(candidate=redacted, pattern=pattern, llm_error=error, basis=basis)
