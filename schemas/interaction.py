"""The normalized `Interaction` every source maps to, and its scored form."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from schemas.base import Model, Source, UtcDatetime, utcnow

Unit = Field(ge=0.0, le=1.0)


class Outcome(StrEnum):
    """How an interaction ended."""

    SUCCESS = "success"
    PARTIAL = "partial"
    FAILURE = "failure"
    UNKNOWN = "unknown"


class Interaction(Model):
    """One source event mapped to the inputs the value score needs.

    Lifecycle events (``scorable`` false) are normalized too, so they can be stored.
    """

    event_id: str = Field(min_length=1)
    source: Source
    event_type: str
    key: str
    timestamp: UtcDatetime
    scorable: bool
    query: str | None = None
    response: str | None = None
    outcome: Outcome = Outcome.UNKNOWN
    iterations: int | None = Field(default=None, ge=0)
    user_feedback: int | None = Field(default=None, ge=-1, le=1)
    copied_to_clipboard: bool = False
    modified_response: bool = False
    steps: int | None = Field(default=None, ge=0)
    tools_used: list[str] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)
    patterns_used: list[str] = Field(default_factory=list)
    model: str | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    payload: dict[str, Any] = Field(default_factory=dict, description="The source event as sent.")


class ScoreWeights(Model):
    """Weights of the five factors: non-negative and summing to 1."""

    outcome: float = Field(default=0.40, ge=0.0)
    feedback: float = Field(default=0.20, ge=0.0)
    reusability: float = Field(default=0.20, ge=0.0)
    complexity: float = Field(default=0.10, ge=0.0)
    novelty: float = Field(default=0.10, ge=0.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> ScoreWeights:
        total = self.outcome + self.feedback + self.reusability + self.complexity + self.novelty
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"score weights must sum to 1, they sum to {total:.6g}")
        return self


class FactorScores(Model):
    """The five factors, each in [0, 1]."""

    outcome: float = Unit
    feedback: float = Unit
    reusability: float = Unit
    complexity: float = Unit
    novelty: float = Unit


class ScoredInteraction(Model):
    """An interaction with its value score; lifecycle events carry a null score."""

    interaction: Interaction
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    factors: FactorScores | None = None
    weights: ScoreWeights | None = None
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="What each factor was computed from, by factor name."
    )
    threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    high_value: bool = False
    scorer_version: str | None = None
    scored_at: datetime = Field(default_factory=utcnow)

    @property
    def event_id(self) -> str:
        """The id of the event this score belongs to."""
        return self.interaction.event_id
