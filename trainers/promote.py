"""The promotion rule: is the candidate measurably better than what is active?

Promote only when the eval set has at least ``min_eval_examples`` examples and
``candidate_loss <= active_loss * (1 - min_improvement)`` (relative improvement, inclusive).
Non-finite losses never promote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Relative tolerance so that a loss exactly on the threshold promotes despite float rounding.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why (a sentence with the numbers)."""

    promote: bool
    reason: str
    relative_improvement: float
    """(active - candidate) / active; 0.0 when undefined."""


def relative_improvement(active_loss: float, candidate_loss: float) -> float:
    """``(active - candidate) / active``; positive = the candidate is better; 0 if undefined."""
    if not (math.isfinite(active_loss) and math.isfinite(candidate_loss)) or active_loss == 0:
        return 0.0
    return (active_loss - candidate_loss) / abs(active_loss)


def decide(
    active_loss: float,
    candidate_loss: float,
    eval_examples: int,
    *,
    min_improvement: float,
    min_eval_examples: int,
    active_label: str = "the active model",
) -> Decision:
    """Apply the promotion rule; ``active_label`` names what the candidate is compared with."""
    gain = relative_improvement(active_loss, candidate_loss)
    numbers = (
        f"candidate eval loss {candidate_loss:.4f} vs {active_loss:.4f} for {active_label} "
        f"({gain:+.2%} relative, needs >= {min_improvement:.2%}) on {eval_examples} eval examples"
    )
    if eval_examples < min_eval_examples:
        return Decision(
            False,
            f"rejected: the eval set has {eval_examples} examples, fewer than the "
            f"{min_eval_examples} required; {numbers}",
            gain,
        )
    if not (math.isfinite(active_loss) and math.isfinite(candidate_loss)):
        return Decision(False, f"rejected: a loss is not finite; {numbers}", gain)
    threshold = active_loss * (1.0 - min_improvement)
    if candidate_loss <= threshold + _TOLERANCE * abs(threshold):
        return Decision(True, f"promoted: {numbers}", gain)
    return Decision(False, f"rejected: not better enough: {numbers}", gain)
