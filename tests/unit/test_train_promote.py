"""The promotion rule's boundaries."""

from __future__ import annotations

import math

import pytest

from trainers.promote import decide, relative_improvement


def _decide(active: float, candidate: float, examples: int = 50, **kw: float) -> bool:
    kw.setdefault("min_improvement", 0.01)
    kw.setdefault("min_eval_examples", 20)
    return decide(active, candidate, examples, **kw).promote  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("active", "candidate", "promote"),
    [
        (2.0, 1.98, True),  # exactly 1% lower: promoted (inclusive)
        (1.0, 0.99, True),
        (2.0, 1.9801, False),  # 0.995% lower: not enough
        (2.0, 2.0, False),  # equal
        (2.0, 2.5, False),  # worse
        (2.0, 1.0, True),  # much better
    ],
)
def test_relative_threshold(active: float, candidate: float, promote: bool) -> None:
    assert _decide(active, candidate) is promote


def test_eval_set_size_boundary() -> None:
    assert _decide(2.0, 1.0, examples=20) is True
    decision = decide(2.0, 1.0, 19, min_improvement=0.01, min_eval_examples=20)
    assert not decision.promote
    assert "19 examples" in decision.reason
    assert "20 required" in decision.reason


def test_zero_min_improvement_promotes_equal_loss() -> None:
    assert _decide(2.0, 2.0, min_improvement=0.0) is True
    assert _decide(2.0, 2.0000001, min_improvement=0.0) is False


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_losses_never_promote(bad: float) -> None:
    assert _decide(bad, 1.0) is False
    assert _decide(2.0, bad) is False
    assert relative_improvement(bad, 1.0) == 0.0


def test_reason_carries_the_numbers() -> None:
    decision = decide(
        2.0,
        1.5,
        40,
        min_improvement=0.01,
        min_eval_examples=10,
        active_label="the active adapter v0002",
    )
    assert decision.promote
    assert decision.relative_improvement == pytest.approx(0.25)
    for text in ("promoted", "1.5000", "2.0000", "+25.00%", "1.00%", "v0002", "40 eval"):
        assert text in decision.reason
    rejected = decide(2.0, 1.999, 40, min_improvement=0.01, min_eval_examples=10)
    assert rejected.reason.startswith("rejected: not better enough")
