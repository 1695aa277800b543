"""Training triggers and results."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.base import Model, utcnow


class TriggerReason(StrEnum):
    """Why a training run was requested."""

    LEARNINGS = "learnings"
    TIME = "time"
    QUALITY = "quality"
    MANUAL = "manual"


class TrainingTrigger(Model):
    """A request to train a new adapter for one base model; one per firing."""

    trigger_id: str = Field(min_length=1, description="Deterministic; duplicates are recognized.")
    base_model: str = Field(min_length=1)
    reasons: list[TriggerReason] = Field(min_length=1)
    detail: str = ""
    learnings_since_training: int = Field(default=0, ge=0)
    days_since_training: float | None = Field(default=None, ge=0)
    success_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    window_size: int = Field(default=0, ge=0)
    dataset_size: int = Field(default=0, ge=0)
    requested_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class TrainingResult(Model):
    """What came of a trigger: promoted or not, why, and the numbers."""

    trigger_id: str
    base_model: str
    status: Literal["promoted", "rejected", "failed", "skipped"]
    reason: str
    candidate_version: int | None = None
    active_version: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset_hash: str | None = None
    train_examples: int = Field(default=0, ge=0)
    eval_examples: int = Field(default=0, ge=0)
    golden_examples: int = Field(
        default=0, ge=0, description="Examples of the golden set both models were scored on."
    )
    durations_s: dict[str, float] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)
