"""Pattern feedback math (docs/architecture.md, "Pattern extraction")."""

from __future__ import annotations

from datetime import timedelta

import pytest

from extractors.feedback import apply_feedback, confidence_delta, signals_from
from schemas.interaction import Outcome
from schemas.pattern import Pattern
from tests.unit.test_extract_support import T0, candidate


@pytest.mark.parametrize(
    ("outcome", "quality", "delta"),
    [
        (Outcome.SUCCESS, 0.8, 0.08),
        (Outcome.SUCCESS, 0.75, 0.075),
        (Outcome.SUCCESS, 0.74, 0.0),
        (Outcome.SUCCESS, 0.49, -0.1),
        (Outcome.FAILURE, 0.9, -0.1),
        (Outcome.PARTIAL, 0.6, 0.0),
        (Outcome.PARTIAL, 0.4, -0.1),
        (Outcome.UNKNOWN, 0.9, 0.0),
    ],
)
def test_confidence_delta(outcome: Outcome, quality: float, delta: float) -> None:
    assert confidence_delta(outcome, quality) == pytest.approx(delta)


def test_apply_updates_confidence_usage_and_success_rate() -> None:
    p = Pattern(pattern_id="p", name="n", description="d", created_at=T0, updated_at=T0)
    later = T0 + timedelta(days=1)
    p1 = apply_feedback(p, Outcome.SUCCESS, 0.9, later)
    assert (p1.confidence, p1.usage_count, p1.success_rate) == (0.59, 1, 1.0)
    assert p1.updated_at == later
    p2 = apply_feedback(p1, Outcome.FAILURE, 0.3, T0)
    assert (p2.confidence, p2.usage_count, p2.success_rate) == (0.49, 2, 0.5)
    assert p2.updated_at == later  # never moves back
    p3 = apply_feedback(p2, Outcome.PARTIAL, 0.6, later)
    assert (p3.confidence, p3.usage_count, p3.success_rate) == (0.49, 3, 0.5)
    p4 = apply_feedback(p3, Outcome.UNKNOWN, 0.6, later)
    assert (p4.usage_count, p4.success_rate) == (4, 0.5)


def test_confidence_is_clamped() -> None:
    high = Pattern(pattern_id="p", name="n", description="d", confidence=0.98)
    assert apply_feedback(high, Outcome.SUCCESS, 1.0, T0).confidence == 1.0
    low = Pattern(pattern_id="p", name="n", description="d", confidence=0.05)
    assert apply_feedback(low, Outcome.FAILURE, 0.1, T0).confidence == 0.0


def test_signals_need_a_score_and_patterns() -> None:
    c = candidate("e9", patterns_used=["p1", "p2", "p1", ""], outcome=Outcome.FAILURE, score=0.3)
    signals = signals_from(c)
    assert [s.pattern_id for s in signals] == ["p1", "p2"]
    assert {(s.event_id, s.outcome, s.quality) for s in signals} == {("e9", Outcome.FAILURE, 0.3)}
    assert signals_from(candidate(patterns_used=["p1"], score=None)) == []
    assert signals_from(candidate()) == []
