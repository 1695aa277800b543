"""Pattern feedback: interactions that list ``patterns_used`` move those patterns' confidence.

- success with quality >= 0.75: confidence += quality * 0.1;
- failure, or quality < 0.5: confidence -= 0.1;
- otherwise confidence is unchanged; always clamped to [0, 1].

Quality is the interaction's value score. Every application counts one use: ``usage_count``
grows by one and ``success_rate`` is the running mean of the outcomes over the uses (success 1,
partial 0.5, failure 0; an unknown outcome leaves the rate where it is). Applying the same
event twice changes nothing: the store keeps the ids of applied events with the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from schemas.interaction import Outcome, ScoredInteraction
from schemas.pattern import Pattern

SUCCESS_MIN_QUALITY = 0.75
FAILURE_MAX_QUALITY = 0.5
STEP = 0.1

Effect = Literal["up", "down", "neutral"]
_OUTCOME_VALUE = {Outcome.SUCCESS: 1.0, Outcome.PARTIAL: 0.5, Outcome.FAILURE: 0.0}


def confidence_delta(outcome: Outcome, quality: float) -> float:
    """How much one use moves a pattern's confidence (before clamping)."""
    if outcome is Outcome.SUCCESS and quality >= SUCCESS_MIN_QUALITY:
        return quality * STEP
    if outcome is Outcome.FAILURE or quality < FAILURE_MAX_QUALITY:
        return -STEP
    return 0.0


def effect_of(delta: float) -> Effect:
    """The label of a confidence change."""
    return "up" if delta > 0 else "down" if delta < 0 else "neutral"


def apply_feedback(pattern: Pattern, outcome: Outcome, quality: float, at: datetime) -> Pattern:
    """``pattern`` after one use with ``outcome`` and ``quality`` (the value score) at ``at``."""
    delta = confidence_delta(outcome, quality)
    confidence = min(1.0, max(0.0, pattern.confidence + delta))
    n = pattern.usage_count
    observed = _OUTCOME_VALUE.get(outcome, pattern.success_rate)
    rate = (pattern.success_rate * n + observed) / (n + 1)
    return pattern.model_copy(
        update={
            "confidence": round(confidence, 6),
            "success_rate": round(min(1.0, max(0.0, rate)), 6),
            "usage_count": n + 1,
            "updated_at": max(pattern.updated_at, at),
        }
    )


@dataclass(frozen=True)
class FeedbackSignal:
    """One use of one pattern, read from a scored interaction."""

    pattern_id: str
    event_id: str
    outcome: Outcome
    quality: float
    at: datetime


def signals_from(scored: ScoredInteraction) -> list[FeedbackSignal]:
    """The feedback an interaction carries: one signal per pattern used, none without a score."""
    i = scored.interaction
    if scored.score is None or not i.patterns_used:
        return []
    seen: list[str] = []
    for pid in i.patterns_used:
        if pid and pid not in seen:
            seen.append(pid)
    return [FeedbackSignal(pid, i.event_id, i.outcome, scored.score, i.timestamp) for pid in seen]
