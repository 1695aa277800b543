"""The composite value score of one interaction (docs/architecture.md, "The value score").

``value = w_o·outcome + w_f·feedback + w_r·reusability + w_c·complexity + w_n·novelty``, by
default ``0.40·outcome + 0.20·feedback + 0.20·reusability + 0.10·complexity + 0.10·novelty``,
rounded to 6 decimals; an interaction is high value when its score is at or above the
threshold. The vector look-ups (done elsewhere, with the parameters below) are passed in as
`Lookups`, so scoring itself is pure and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.base import utcnow
from schemas.interaction import FactorScores, Interaction, ScoredInteraction, ScoreWeights
from scorers.factors import (
    complexity_factor,
    feedback_factor,
    novelty_factor,
    outcome_factor,
    reusability_factor,
)

__all__ = [
    "NOVELTY_MIN_COSINE",
    "NOVELTY_TOP_K",
    "REUSABILITY_MIN_COSINE",
    "REUSABILITY_TOP_K",
    "SCORER_VERSION",
    "Lookups",
    "score_interaction",
]

SCORER_VERSION = "2.0"
"""Recorded in every `ScoredInteraction`; bump it when a factor or the composite changes.

2.0: novelty against earlier high-value interactions instead of extracted patterns; both
look-ups see exactly the interactions visible under the arrival-time watermark
(`scorers.watermark`); cosines rounded to 4 decimals before any comparison or use."""

# Parameters of the vector look-ups behind reusability and novelty.
REUSABILITY_MIN_COSINE = 0.85
"""Earlier interactions in ``interaction-history`` count as similar from this cosine on."""
REUSABILITY_TOP_K = 10
"""At most this many similar earlier interactions are counted."""
NOVELTY_MIN_COSINE = 0.90
"""Earlier high-value interactions count as known knowledge from this cosine on."""
NOVELTY_TOP_K = 5
"""The novelty look-up considers this many nearest earlier high-value interactions."""


@dataclass(frozen=True, slots=True)
class Lookups:
    """Results of the vector look-ups for one interaction (only what is visible to it).

    Visible: event time strictly earlier, arrived at most ``horizon_s`` after the event (see
    `scorers.watermark`), never the event itself. Cosines are rounded to 4 decimals.
    ``similar_earlier``: visible interactions with cosine >= `REUSABILITY_MIN_COSINE` among
    the top `REUSABILITY_TOP_K`. ``max_known_similarity``: the highest cosine among the top
    `NOVELTY_TOP_K` visible *high-value* interactions with cosine >= `NOVELTY_MIN_COSINE`,
    ``None`` when there is none. ``embedded``: whether the interaction had a query to embed
    (when false the look-ups found nothing by construction). ``late``: the event arrived after
    the watermark had passed its time (later events were scored without it); ``forced``: it
    was released by the bounded wait before its look-ups were known to be complete;
    ``horizon_s``: the arrival horizon used (None: any arrival). All are recorded in the
    inputs.
    """

    similar_earlier: int
    max_known_similarity: float | None
    embedded: bool = True
    late: bool = False
    forced: bool = False
    horizon_s: float | None = None


def score_interaction(
    interaction: Interaction,
    lookups: Lookups,
    *,
    weights: ScoreWeights,
    threshold: float,
    scored_at: datetime | None = None,
) -> ScoredInteraction:
    """Score one interaction.

    Lifecycle interactions (``scorable`` false) get a null score, null factors and
    ``high_value`` false. Scorable ones get the weighted sum of the five factors with
    ``weights``, rounded to 6 decimals (and kept within [0, 1], which the weights' tolerance
    of 1e-6 on their sum could otherwise exceed), ``high_value = score >= threshold``, and
    the inputs of each factor by factor name. ``scored_at`` defaults to now (UTC).
    """
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    when = scored_at if scored_at is not None else utcnow()
    if not interaction.scorable:
        return ScoredInteraction(
            interaction=interaction,
            threshold=threshold,
            scorer_version=SCORER_VERSION,
            scored_at=when,
        )

    outcome, outcome_inputs = outcome_factor(interaction)
    feedback, feedback_inputs = feedback_factor(interaction)
    reusability, reusability_inputs = reusability_factor(lookups.similar_earlier)
    complexity, complexity_inputs = complexity_factor(interaction)
    novelty, novelty_inputs = novelty_factor(lookups.max_known_similarity)

    visibility = {
        "embedded": lookups.embedded,
        "late": lookups.late,
        "forced": lookups.forced,
        "horizon_s": lookups.horizon_s,
    }
    total = (
        weights.outcome * outcome
        + weights.feedback * feedback
        + weights.reusability * reusability
        + weights.complexity * complexity
        + weights.novelty * novelty
    )
    score = min(1.0, max(0.0, round(total, 6)))

    return ScoredInteraction(
        interaction=interaction,
        score=score,
        factors=FactorScores(
            outcome=outcome,
            feedback=feedback,
            reusability=reusability,
            complexity=complexity,
            novelty=novelty,
        ),
        weights=weights,
        inputs={
            "outcome": outcome_inputs,
            "feedback": feedback_inputs,
            "reusability": {
                **reusability_inputs,
                "min_cosine": REUSABILITY_MIN_COSINE,
                "top_k": REUSABILITY_TOP_K,
                **visibility,
            },
            "complexity": complexity_inputs,
            "novelty": {
                **novelty_inputs,
                "among": "earlier high-value interactions",
                "min_cosine": NOVELTY_MIN_COSINE,
                "top_k": NOVELTY_TOP_K,
                **visibility,
            },
        },
        threshold=threshold,
        high_value=score >= threshold,
        scorer_version=SCORER_VERSION,
        scored_at=when,
    )
