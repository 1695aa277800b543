"""The promotion rule: is the candidate measurably better than what is active?

Promote only when all of these hold:

1. the eval set has at least ``min_eval_examples`` examples, and both losses are finite;
2. **golden set** (when given): the candidate is not worse than the active model on the fixed,
   user-curated golden set (``golden_candidate <= golden_active * (1 + max_golden_regression)``),
   whatever it does on the dataset's eval split;
3. **point estimate**: ``candidate_loss <= active_loss * (1 - min_improvement)`` (relative
   improvement of the token-weighted eval loss, inclusive);
4. **confidence** (when per-example losses are given): the lower bound of the paired bootstrap
   interval of the relative improvement (`paired_bootstrap`: resample the eval examples with
   replacement, seeded, ``confidence`` two-sided) is at least ``min_improvement`` as well, so a
   gain carried by a few lucky examples does not promote.

Every decision's reason carries the numbers: both losses, the improvement and its interval, and
the golden losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Relative tolerance so that a loss exactly on the threshold promotes despite float rounding.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval of the relative improvement."""

    low: float
    high: float
    confidence: float
    resamples: int


@dataclass(frozen=True)
class GoldenResult:
    """Active and candidate loss on the golden set."""

    active_loss: float
    candidate_loss: float
    examples: int

    @property
    def relative_change(self) -> float:
        """``(candidate - active) / active``: positive = the candidate got worse."""
        return -relative_improvement(self.active_loss, self.candidate_loss)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and why (a sentence with the numbers)."""

    promote: bool
    reason: str
    relative_improvement: float
    """(active - candidate) / active; 0.0 when undefined."""
    interval: Interval | None = None
    golden: GoldenResult | None = None


def relative_improvement(active_loss: float, candidate_loss: float) -> float:
    """``(active - candidate) / active``; positive = the candidate is better; 0 if undefined."""
    if not (math.isfinite(active_loss) and math.isfinite(candidate_loss)) or active_loss == 0:
        return 0.0
    return (active_loss - candidate_loss) / abs(active_loss)


def paired_bootstrap(
    active: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of the relative improvement ``1 - sum(candidate) / sum(active)``.

    ``active[i]`` and ``candidate[i]`` are the two models' summed token losses on eval example
    ``i`` (the same tokens, so the ratio of sums is the ratio of the token-weighted mean
    losses). Each resample draws the examples with replacement, the same draw for both models
    (paired). Deterministic for a seed. Raises ValueError for empty or mismatched inputs.
    """
    import numpy as np

    if len(active) != len(candidate) or not active:
        raise ValueError(
            f"paired bootstrap needs two equally long non-empty loss lists, got "
            f"{len(active)} and {len(candidate)}"
        )
    a = np.asarray(active, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(resamples, len(a)))
    sum_a = a[draws].sum(axis=1)
    sum_c = c[draws].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = np.where(sum_a > 0, 1.0 - sum_c / sum_a, 0.0)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(gains, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence, resamples)


def decide(
    active_loss: float,
    candidate_loss: float,
    eval_examples: int,
    *,
    min_improvement: float,
    min_eval_examples: int,
    active_label: str = "the active model",
    interval: Interval | None = None,
    golden: GoldenResult | None = None,
    max_golden_regression: float = 0.0,
) -> PromotionDecision:
    """Apply the promotion rule; ``active_label`` names what the candidate is compared with.

    ``interval`` is the bootstrap interval of the relative improvement on the eval split
    (None: the point estimate alone decides); ``golden`` the losses on the golden set (None:
    no golden set).
    """
    gain = relative_improvement(active_loss, candidate_loss)
    numbers = (
        f"candidate eval loss {candidate_loss:.4f} vs {active_loss:.4f} for {active_label} "
        f"({gain:+.2%} relative, needs >= {min_improvement:.2%}"
    )
    if interval is not None:
        numbers += (
            f"; {interval.confidence:.0%} interval [{interval.low:+.2%}, {interval.high:+.2%}]"
        )
    numbers += f") on {eval_examples} eval examples"
    if golden is not None:
        numbers += (
            f"; golden set loss {golden.candidate_loss:.4f} vs {golden.active_loss:.4f} "
            f"({golden.relative_change:+.2%}) on {golden.examples} examples"
        )

    def done(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, gain, interval, golden)

    if eval_examples < min_eval_examples:
        return done(
            False,
            f"rejected: the eval set has {eval_examples} examples, fewer than the "
            f"{min_eval_examples} required; {numbers}",
        )
    if not (math.isfinite(active_loss) and math.isfinite(candidate_loss)):
        return done(False, f"rejected: a loss is not finite; {numbers}")
    if golden is not None:
        if not (math.isfinite(golden.active_loss) and math.isfinite(golden.candidate_loss)):
            return done(False, f"rejected: a golden set loss is not finite; {numbers}")
        limit = golden.active_loss * (1.0 + max_golden_regression)
        if golden.candidate_loss > limit + _TOLERANCE * abs(limit):
            return done(
                False,
                f"rejected: worse on the golden set ({golden.relative_change:+.2%}, allowed "
                f"{max_golden_regression:+.2%}), whatever the eval split says; {numbers}",
            )
    threshold = active_loss * (1.0 - min_improvement)
    if candidate_loss > threshold + _TOLERANCE * abs(threshold):
        return done(False, f"rejected: not better enough: {numbers}")
    if interval is not None and interval.low < min_improvement - _TOLERANCE:
        return done(
            False,
            f"rejected: not confidently better: the lower bound of the improvement "
            f"{interval.low:+.2%} is below {min_improvement:.2%}: {numbers}",
        )
    return done(True, f"promoted: {numbers}")
