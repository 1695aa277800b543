"""The promotion rule's boundaries: threshold, eval size, bootstrap interval, golden set."""

from __future__ import annotations

import math

import pytest

from trainers.promote import GoldenResult, decide, paired_bootstrap, relative_improvement


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


# --- the paired bootstrap and the golden set ----------------------------------------------------


def test_paired_bootstrap_is_seeded_and_brackets_the_improvement() -> None:
    active = [10.0 + (k % 7) for k in range(60)]
    candidate = [a * 0.9 for a in active]  # 10% better on every example
    interval = paired_bootstrap(active, candidate, resamples=500, seed=3)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)
    noisy = [a * (0.8 if k % 2 else 1.02) for k, a in enumerate(active)]
    one = paired_bootstrap(active, noisy, resamples=500, seed=3)
    assert one == paired_bootstrap(active, noisy, resamples=500, seed=3)
    assert one != paired_bootstrap(active, noisy, resamples=500, seed=4)
    point = 1 - sum(noisy) / sum(active)
    assert one.low < point < one.high
    assert (one.confidence, one.resamples) == (0.95, 500)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_a_gain_carried_by_a_few_examples_is_not_confident() -> None:
    # the point estimate clears 1% (+2.8%), but two examples carry it all
    active = [10.0] * 30
    candidate = [10.0] * 28 + [5.0, 6.5]
    gain = 1 - sum(candidate) / sum(active)
    assert gain > 0.01
    interval = paired_bootstrap(active, candidate, resamples=2000, seed=42)
    assert interval.low < 0.01
    decision = decide(
        sum(active) / 300,
        sum(candidate) / 300,
        30,
        min_improvement=0.01,
        min_eval_examples=10,
        interval=interval,
    )
    assert not decision.promote
    assert decision.reason.startswith("rejected: not confidently better")
    assert "95% interval [" in decision.reason
    assert decision.interval == interval
    steady = paired_bootstrap(active, [9.0] * 30, seed=42)
    assert decide(1.0, 0.9, 30, min_improvement=0.01, min_eval_examples=10, interval=steady).promote


def test_worse_on_the_golden_set_is_rejected_whatever_the_split_says() -> None:
    golden = GoldenResult(active_loss=2.0, candidate_loss=2.02, examples=24)
    decision = decide(2.0, 1.0, 50, min_improvement=0.01, min_eval_examples=10, golden=golden)
    assert not decision.promote
    assert "worse on the golden set (+1.00%" in decision.reason
    assert "golden set loss 2.0200 vs 2.0000 (+1.00%) on 24 examples" in decision.reason
    assert decision.golden == golden
    # tolerated regression, and an equal golden loss, pass
    assert decide(
        2.0,
        1.0,
        50,
        min_improvement=0.01,
        min_eval_examples=10,
        golden=golden,
        max_golden_regression=0.02,
    ).promote
    same = GoldenResult(2.0, 2.0, 24)
    assert decide(2.0, 1.0, 50, min_improvement=0.01, min_eval_examples=10, golden=same).promote
    bad = GoldenResult(2.0, math.nan, 24)
    assert not decide(2.0, 1.0, 50, min_improvement=0.01, min_eval_examples=10, golden=bad).promote
