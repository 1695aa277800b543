"""When to train: the improvement state per base model and the trigger rules, as pure functions.

The `triggers` Faust agent keeps one `ImprovementState` per base model in a changelogged table
and feeds it `ImprovementEvent`s (learnings, outcomes, results, manual requests, clock ticks);
everything that decides lives here, so it is tested without a broker.

Rules (any one fires, all configurable through ``LEARNSTREAM_TRIGGERS__*``):

- **learnings**: at least ``learnings_threshold`` learnings since the last training;
- **time**: at least ``max_days_between`` days since the last training (or, before the first
  one, since the first learning) and at least one new learning;
- **quality**: success rate over the last ``success_window`` scored interactions below
  ``success_rate_threshold``, with at least ``success_min_samples`` in the window, and not within
  ``quality_cooldown_hours`` of the last quality firing;
- **manual**: on request (CLI or HTTP).

Before the first training, the automatic rules also need ``min_dataset_size`` learnings in
total (each learning appends one dataset example). After a firing, nothing fires again until
that trigger's result arrives (or ``pending_timeout_hours`` pass), so redeliveries and restarts
never cause a storm; trigger ids are deterministic (base model + firing sequence number), so a
trigger re-emitted after a crash has the same id and the trainer recognizes it. A failed or
skipped run holds automatic rules back for ``retry_cooldown_hours``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from learnstream.core.settings import TriggerSettings
from schemas.base import UtcDatetime
from schemas.interaction import Outcome, ScoredInteraction
from schemas.pattern import LearnedPattern
from schemas.training import TrainingResult, TrainingTrigger, TriggerReason

TRIGGER_NS = uuid.UUID("5d1f9a0e-7b7c-4c53-9f0e-2a4a9d0c6b11")
RECENT_LEARNINGS = 20


class ImprovementEvent(BaseModel):
    """One input of the trigger agent, keyed by base model on the agent's internal topic."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["learning", "outcome", "result", "manual", "tick"]
    base_model: str = Field(min_length=1)
    at: UtcDatetime
    event_id: str | None = None
    success: bool | None = None
    pattern_id: str | None = None
    pattern_name: str | None = None
    status: str | None = None
    result: TrainingResult | None = None
    requested_by: str | None = None
    detail: str = ""


def from_learned(record: LearnedPattern, default_base_model: str) -> ImprovementEvent:
    """The learning a ``patterns.learned`` record counts as (one per event and pattern)."""
    return ImprovementEvent(
        kind="learning",
        base_model=record.base_model or default_base_model,
        at=record.learned_at,
        event_id=f"{record.event_id}/{record.pattern.pattern_id}",
        pattern_id=record.pattern.pattern_id,
        pattern_name=record.pattern.name,
        status=record.status,
    )


def from_scored(scored: ScoredInteraction, base_model: str) -> ImprovementEvent | None:
    """The outcome a scored interaction counts as, or None (lifecycle, unknown outcome)."""
    i = scored.interaction
    if not i.scorable or i.outcome is Outcome.UNKNOWN:
        return None
    return ImprovementEvent(
        kind="outcome",
        base_model=base_model,
        at=i.timestamp,
        event_id=i.event_id,
        success=i.outcome is Outcome.SUCCESS,
    )


def from_result(result: TrainingResult, now: datetime) -> ImprovementEvent:
    """A ``training.results`` record as an improvement event (received ``now``)."""
    return ImprovementEvent(kind="result", base_model=result.base_model, at=now, result=result)


class RecentLearning(BaseModel):
    """A learning, as listed by ``/api/v1/learnings/recent``."""

    pattern_id: str
    name: str | None = None
    status: str | None = None
    event_id: str | None = None
    at: UtcDatetime


class ImprovementState(BaseModel):
    """Durable improvement state of one base model (a value of the agent's table)."""

    base_model: str
    learnings_total: int = 0
    learnings_since_training: int = 0
    first_learning_at: UtcDatetime | None = None
    last_learning_at: UtcDatetime | None = None
    outcomes: str = Field(default="", description="Recent outcomes, oldest first: 1 ok, 0 not.")
    scored_total: int = 0
    successes_total: int = 0
    last_training_at: UtcDatetime | None = None
    last_quality_fire_at: UtcDatetime | None = None
    retry_after: UtcDatetime | None = None
    sequence: int = 0
    pending_trigger_id: str | None = None
    pending_since: UtcDatetime | None = None
    pending_learnings: int = 0
    last_trigger: TrainingTrigger | None = None
    last_result: TrainingResult | None = None
    runs: dict[str, int] = Field(default_factory=dict)
    active_version: int | None = None
    improvement_score: float | None = None
    last_check: UtcDatetime | None = None
    recent_learnings: list[RecentLearning] = Field(default_factory=list)
    seen_event_ids: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Recent ids per kind ('learning', 'outcome'), oldest first: each kind has "
        "its own window, so a burst of outcomes never pushes a learning out.",
    )

    @field_validator("seen_event_ids", mode="before")
    @classmethod
    def _split_shared_window(cls, value: Any) -> Any:
        # State stored before the windows were split: one list of "l:<id>" / "o:<id>".
        if not isinstance(value, list):
            return value
        kinds = {"l": "learning", "o": "outcome"}
        split: dict[str, list[str]] = {}
        for marker in value:
            prefix, _, event_id = str(marker).partition(":")
            if prefix in kinds:
                split.setdefault(kinds[prefix], []).append(event_id)
        return split

    @property
    def window(self) -> list[bool]:
        """The recent outcomes as booleans."""
        return [c == "1" for c in self.outcomes]

    @property
    def success_rate(self) -> float | None:
        """Success rate over the window, or None when empty."""
        return self.outcomes.count("1") / len(self.outcomes) if self.outcomes else None


@dataclass(frozen=True)
class TriggerDecision:
    """Whether the rules say to train now, and why (or why not)."""

    fire: bool
    reasons: tuple[TriggerReason, ...]
    detail: str


SEEN_IDS_KEPT = 256  # recent ids per kind, so a redelivered learning or outcome counts once


def apply(
    state: ImprovementState, event: ImprovementEvent, cfg: TriggerSettings, now: datetime
) -> None:
    """Fold one event into the state (in place); ticks and manual requests change nothing.

    ``now`` is the processing time: every duration the rules measure (since the last training,
    pending, cooldowns) is wall-clock time, so old or replayed events cannot age the state.
    """
    if event.kind in ("learning", "outcome") and event.event_id is not None:
        seen = state.seen_event_ids.get(event.kind, [])
        if event.event_id in seen:
            return  # a redelivered learning or outcome counts once
        state.seen_event_ids = {
            **state.seen_event_ids,
            event.kind: [*seen, event.event_id][-SEEN_IDS_KEPT:],
        }
    if event.kind == "learning":
        state.learnings_total += 1
        state.learnings_since_training += 1
        state.first_learning_at = state.first_learning_at or now
        state.last_learning_at = now
        state.recent_learnings = [
            RecentLearning(
                pattern_id=event.pattern_id or "",
                name=event.pattern_name,
                status=event.status,
                event_id=event.event_id,
                at=event.at,
            ),
            *state.recent_learnings,
        ][:RECENT_LEARNINGS]
    elif event.kind == "outcome" and event.success is not None:
        state.outcomes = (state.outcomes + ("1" if event.success else "0"))[-cfg.success_window :]
        state.scored_total += 1
        state.successes_total += int(event.success)
    elif event.kind == "result" and event.result is not None:
        _apply_result(state, event.result, cfg, now)


def _apply_result(
    state: ImprovementState, result: TrainingResult, cfg: TriggerSettings, now: datetime
) -> None:
    if state.last_result is not None and state.last_result.trigger_id == result.trigger_id:
        return  # a redelivered result
    state.last_result = result
    state.runs[result.status] = state.runs.get(result.status, 0) + 1
    if result.trigger_id == state.pending_trigger_id:
        fired_with = state.pending_learnings
        state.pending_trigger_id = None
        state.pending_since = None
        state.pending_learnings = 0
    else:
        fired_with = 0
    if result.status in ("promoted", "rejected"):
        state.last_training_at = now
        state.learnings_since_training = max(0, state.learnings_since_training - fired_with)
        state.retry_after = None
    else:
        state.retry_after = now + timedelta(hours=cfg.retry_cooldown_hours)
    if result.status == "promoted":
        state.active_version = result.candidate_version
        improvement = result.metrics.get("relative_improvement")
        if improvement is not None:
            state.improvement_score = float(improvement)
    elif result.active_version is not None:
        state.active_version = result.active_version


def evaluate(state: ImprovementState, now: datetime, cfg: TriggerSettings) -> TriggerDecision:
    """Apply the automatic rules to the state at time ``now`` (no side effects)."""
    if state.pending_trigger_id is not None and state.pending_since is not None:
        waited = now - state.pending_since
        if waited < timedelta(hours=cfg.pending_timeout_hours):
            return TriggerDecision(
                False, (), f"waiting for the result of {state.pending_trigger_id}"
            )
    if state.retry_after is not None and now < state.retry_after:
        return TriggerDecision(
            False, (), f"last run did not train; retrying after {state.retry_after}"
        )
    if state.last_training_at is None and state.learnings_total < cfg.min_dataset_size:
        return TriggerDecision(
            False,
            (),
            f"first training needs {cfg.min_dataset_size} learnings, have {state.learnings_total}",
        )
    reasons: list[TriggerReason] = []
    notes: list[str] = []
    if state.learnings_since_training >= cfg.learnings_threshold:
        reasons.append(TriggerReason.LEARNINGS)
        notes.append(
            f"{state.learnings_since_training} learnings since last training "
            f"(>= {cfg.learnings_threshold})"
        )
    since = state.last_training_at or state.first_learning_at
    if since is not None and state.learnings_since_training > 0:
        days = (now - since).total_seconds() / 86400
        if days >= cfg.max_days_between:
            reasons.append(TriggerReason.TIME)
            notes.append(f"{days:.1f} days since last training (>= {cfg.max_days_between})")
    rate = state.success_rate
    window = len(state.outcomes)
    if rate is not None and window >= cfg.success_min_samples and rate < cfg.success_rate_threshold:
        cooled = state.last_quality_fire_at is None or now - state.last_quality_fire_at >= (
            timedelta(hours=cfg.quality_cooldown_hours)
        )
        if cooled:
            reasons.append(TriggerReason.QUALITY)
            notes.append(
                f"success rate {rate:.3f} over the last {window} < {cfg.success_rate_threshold}"
            )
    if not reasons:
        return TriggerDecision(False, (), "no rule fires")
    return TriggerDecision(True, tuple(reasons), "; ".join(notes))


def trigger_id(base_model: str, sequence: int) -> str:
    """Deterministic id of a base model's n-th firing."""
    return str(uuid.uuid5(TRIGGER_NS, f"{base_model}#{sequence}"))


def fire(
    state: ImprovementState,
    now: datetime,
    reasons: tuple[TriggerReason, ...],
    detail: str,
    requested_by: str | None = None,
) -> TrainingTrigger:
    """Record a firing in the state (in place) and return its trigger."""
    state.sequence += 1
    days = None
    since = state.last_training_at or state.first_learning_at
    if since is not None:
        days = max(0.0, (now - since).total_seconds() / 86400)
    trigger = TrainingTrigger(
        trigger_id=trigger_id(state.base_model, state.sequence),
        base_model=state.base_model,
        reasons=list(reasons),
        detail=detail,
        learnings_since_training=state.learnings_since_training,
        days_since_training=days,
        success_rate=state.success_rate,
        window_size=len(state.outcomes),
        dataset_size=state.learnings_total,
        requested_by=requested_by,
        created_at=now,
    )
    state.pending_trigger_id = trigger.trigger_id
    state.pending_since = now
    state.pending_learnings = state.learnings_since_training
    if TriggerReason.QUALITY in reasons:
        state.last_quality_fire_at = now
    state.last_trigger = trigger
    return trigger


def step(
    state: ImprovementState, event: ImprovementEvent, cfg: TriggerSettings, now: datetime
) -> tuple[TrainingTrigger | None, str]:
    """Fold an event in at processing time ``now``, then fire if a rule or request says so.

    Returns the trigger to emit (or None) and a one-line explanation.
    """
    apply(state, event, cfg, now)
    state.last_check = now
    if event.kind == "manual":
        pending = state.pending_trigger_id is not None and state.pending_since is not None
        if pending and now - state.pending_since < timedelta(  # type: ignore[operator]
            hours=cfg.pending_timeout_hours
        ):
            return None, f"manual request ignored: {state.pending_trigger_id} is still pending"
        detail = event.detail or "manual trigger"
        return fire(state, now, (TriggerReason.MANUAL,), detail, event.requested_by), detail
    if event.kind == "result":
        return None, "result recorded"
    decision = evaluate(state, now, cfg)
    if not decision.fire:
        return None, decision.detail
    return fire(state, now, decision.reasons, decision.detail), decision.detail
