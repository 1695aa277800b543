"""Trigger rules: each fires and does not fire at its boundary; no storms; reset on results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from learnstream.core.settings import TriggerSettings
from schemas.interaction import Outcome
from schemas.pattern import LearnedPattern, Pattern
from schemas.training import TrainingResult, TriggerReason
from tests.unit.test_extract_support import candidate
from trainers.triggers import (
    SEEN_IDS_KEPT,
    ImprovementEvent,
    ImprovementState,
    evaluate,
    from_learned,
    from_result,
    from_scored,
    step,
    trigger_id,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MODEL = "tiny/model"


def cfg(**kw: object) -> TriggerSettings:
    base: dict[str, object] = {
        "learnings_threshold": 5,
        "max_days_between": 7.0,
        "success_rate_threshold": 0.9,
        "success_window": 20,
        "success_min_samples": 10,
        "quality_cooldown_hours": 24.0,
        "min_dataset_size": 0,
    }
    base.update(kw)
    return TriggerSettings.model_validate(base)


def ev(kind: str, n: int = 0, **kw: object) -> ImprovementEvent:
    return ImprovementEvent.model_validate(
        {"kind": kind, "base_model": MODEL, "at": T0, "event_id": f"{kind}-{n}", **kw}
    )


def learn(state: ImprovementState, c: TriggerSettings, count: int, now: datetime = T0) -> list:
    fired, start = [], state.learnings_total
    for n in range(count):
        trigger, _ = step(state, ev("learning", start + n, pattern_id="p"), c, now)
        if trigger:
            fired.append(trigger)
    return fired


def result(trigger_id_: str, status: str = "promoted", **kw: object) -> ImprovementEvent:
    res = TrainingResult(trigger_id=trigger_id_, base_model=MODEL, status=status, reason="x", **kw)  # type: ignore[arg-type]
    return ImprovementEvent(kind="result", base_model=MODEL, at=T0, result=res)


def test_learnings_rule_fires_at_the_threshold_not_before() -> None:
    c, state = cfg(), ImprovementState(base_model=MODEL)
    assert learn(state, c, 4) == []
    fired = learn(state, c, 1)
    assert len(fired) == 1
    t = fired[0]
    assert t.reasons == [TriggerReason.LEARNINGS]
    assert t.learnings_since_training == 5
    assert t.trigger_id == trigger_id(MODEL, 1)


def test_no_storm_while_pending_and_redelivery_counts_once() -> None:
    c, state = cfg(), ImprovementState(base_model=MODEL)
    assert len(learn(state, c, 5)) == 1
    assert learn(state, c, 20) == []  # pending: nothing more fires
    before = state.learnings_total
    step(state, ev("learning", 3, pattern_id="p"), c, T0)  # a redelivered learning
    assert state.learnings_total == before
    # After the pending timeout, it may fire again (a lost result does not block forever).
    later = T0 + timedelta(hours=c.pending_timeout_hours + 1)
    trigger, _ = step(state, ev("tick"), c, later)
    assert trigger is not None and trigger.trigger_id == trigger_id(MODEL, 2)


def test_result_resets_learnings_counted_at_firing_and_keeps_later_ones() -> None:
    c, state = cfg(), ImprovementState(base_model=MODEL)
    (t,) = learn(state, c, 5)
    learn(state, c, 2)  # arrive while training
    step(
        state,
        result(t.trigger_id, candidate_version=3, metrics={"relative_improvement": 0.1}),
        c,
        T0,
    )
    assert state.pending_trigger_id is None
    assert state.learnings_since_training == 2
    assert state.last_training_at == T0
    assert state.active_version == 3 and state.improvement_score == pytest.approx(0.1)
    assert state.runs == {"promoted": 1}
    step(state, result(t.trigger_id), c, T0)  # redelivered result changes nothing
    assert state.runs == {"promoted": 1}
    assert len(learn(state, c, 3)) == 1  # 2 + 3 = 5 again


def test_failed_run_holds_automatic_rules_for_the_retry_cooldown() -> None:
    c, state = cfg(retry_cooldown_hours=1.0), ImprovementState(base_model=MODEL)
    (t,) = learn(state, c, 5)
    step(state, result(t.trigger_id, status="failed"), c, T0)
    assert state.learnings_since_training == 5  # nothing was trained
    assert learn(state, c, 1, T0 + timedelta(minutes=59)) == []
    assert len(learn(state, c, 1, T0 + timedelta(minutes=61))) == 1


def test_time_rule_needs_seven_days_and_a_new_learning() -> None:
    c, state = cfg(learnings_threshold=100), ImprovementState(base_model=MODEL)
    learn(state, c, 1)
    assert step(state, ev("tick"), c, T0 + timedelta(days=6.99))[0] is None
    trigger, _ = step(state, ev("tick"), c, T0 + timedelta(days=7))
    assert trigger is not None and trigger.reasons == [TriggerReason.TIME]
    step(state, result(trigger.trigger_id), c, T0 + timedelta(days=7))
    # No new learning since: the time rule stays quiet however long it waits.
    assert step(state, ev("tick"), c, T0 + timedelta(days=30))[0] is None


def outcomes(state: ImprovementState, c: TriggerSettings, ok: int, bad: int, now: datetime) -> list:
    fired, start = [], state.scored_total
    for n in range(ok + bad):
        e = ev("outcome", start + n, success=n < ok)
        trigger, _ = step(state, e, c, now)
        if trigger:
            fired.append(trigger)
    return fired


def test_quality_rule_boundaries_min_samples_and_cooldown() -> None:
    c = cfg(learnings_threshold=1000)
    state = ImprovementState(base_model=MODEL)
    # 9 samples at 0% success: below the minimum of 10, nothing fires.
    assert outcomes(state, c, 0, 9, T0) == []
    fired = outcomes(state, c, 0, 1, T0)
    assert len(fired) == 1 and fired[0].reasons == [TriggerReason.QUALITY]
    step(state, result(fired[0].trigger_id, status="rejected"), c, T0)
    # Still bad, but within the cooldown: quiet; after it: fires again.
    assert outcomes(state, c, 0, 1, T0 + timedelta(hours=23)) == []
    assert len(outcomes(state, c, 0, 1, T0 + timedelta(hours=25))) == 1


def test_quality_rule_does_not_fire_at_exactly_the_threshold() -> None:
    c = cfg(learnings_threshold=1000)
    state = ImprovementState(base_model=MODEL)
    assert outcomes(state, c, 18, 2, T0) == []  # 0.90 is not below 0.90
    assert state.success_rate == pytest.approx(0.9)
    assert len(state.outcomes) == 20
    assert len(outcomes(state, c, 0, 1, T0)) == 1  # window slides: 17/20 = 0.85


def test_first_training_needs_the_minimum_dataset_size_but_manual_does_not() -> None:
    c = cfg(min_dataset_size=10)
    state = ImprovementState(base_model=MODEL)
    assert learn(state, c, 9) == []
    assert "first training needs 10" in evaluate(state, T0, c).detail
    manual = ev("manual", requested_by="alice", detail="because")
    trigger, _ = step(state, manual, c, T0)
    assert trigger is not None and trigger.reasons == [TriggerReason.MANUAL]
    assert trigger.requested_by == "alice"
    again, why = step(state, ev("manual", 1), c, T0)
    assert again is None and "still pending" in why


def test_learned_records_become_one_learning_per_event_and_pattern() -> None:
    pattern = Pattern(pattern_id="p1", name="Pytest fixture", description="d")
    record = LearnedPattern(pattern=pattern, status="merged", event_id="e1", learned_at=T0)
    event = from_learned(record, "default/model")
    assert (event.kind, event.base_model, event.at) == ("learning", "default/model", T0)
    assert (event.event_id, event.pattern_id, event.status) == ("e1/p1", "p1", "merged")
    own = LearnedPattern(pattern=pattern, status="new", event_id="e1", base_model=MODEL)
    assert from_learned(own, "default/model").base_model == MODEL


@pytest.mark.parametrize(
    ("outcome", "scorable", "expected"),
    [
        (Outcome.SUCCESS, True, True),
        (Outcome.FAILURE, True, False),
        (Outcome.PARTIAL, True, False),
        (Outcome.UNKNOWN, True, None),
        (Outcome.SUCCESS, False, None),
    ],
)
def test_scored_interactions_become_outcomes_when_they_have_one(
    outcome: Outcome, scorable: bool, expected: bool | None
) -> None:
    scored = candidate("e7", "How do I write a fixture?", outcome=outcome)
    scored.interaction.scorable = scorable
    event = from_scored(scored, MODEL)
    if expected is None:
        assert event is None
    else:
        assert event is not None and event.kind == "outcome" and event.success is expected
        assert (event.event_id, event.base_model) == ("e7", MODEL)


def test_results_are_stamped_with_the_time_they_arrive() -> None:
    res = TrainingResult(trigger_id="t", base_model=MODEL, status="rejected", reason="worse")
    event = from_result(res, T0 + timedelta(hours=1))
    assert (event.kind, event.base_model, event.at, event.result) == (
        "result",
        MODEL,
        T0 + timedelta(hours=1),
        res,
    )


def test_mutating_endpoints_need_the_token_or_loopback() -> None:
    from pydantic import SecretStr

    from learnstream.core.settings import load_settings
    from streams.agents.triggers import refuse_mutation

    assert load_settings().worker.web_bind == "127.0.0.1"
    token = SecretStr("s3cret")
    assert refuse_mutation(token, "Bearer s3cret", "10.1.2.3") is None
    assert refuse_mutation(token, "Bearer wrong", "127.0.0.1") == (401, ANY_REASON)
    assert refuse_mutation(token, None, "127.0.0.1") == (401, ANY_REASON)
    assert refuse_mutation(None, None, "127.0.0.1") is None
    assert refuse_mutation(None, None, "::1") is None
    assert refuse_mutation(None, None, "10.1.2.3") == (403, ANY_REASON)
    assert refuse_mutation(None, None, None) == (403, ANY_REASON)
    assert refuse_mutation(None, None, "not-an-ip") == (403, ANY_REASON)


class _AnyReason(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and "LEARNSTREAM_WORKER__TOKEN" in other

    __hash__ = str.__hash__


ANY_REASON = _AnyReason()


def test_outcomes_do_not_push_a_learning_out_of_the_dedupe_window() -> None:
    # Outcomes arrive far more often than learnings: a burst of them must not make a
    # learning redelivered seconds later count twice.
    c, state = cfg(learnings_threshold=1000), ImprovementState(base_model=MODEL)
    step(state, ev("learning", 1, pattern_id="p"), c, T0)
    for n in range(SEEN_IDS_KEPT + 10):
        step(state, ev("outcome", n, success=True), c, T0)
    step(state, ev("learning", 1, pattern_id="p"), c, T0)  # redelivered
    assert state.learnings_total == 1
    # ...and learnings do not push outcomes out either.
    step(state, ev("outcome", SEEN_IDS_KEPT + 9, success=True), c, T0)  # redelivered
    assert state.scored_total == SEEN_IDS_KEPT + 10


def test_a_stored_state_with_the_shared_window_keeps_its_ids() -> None:
    # State written before the windows were split: one list of "l:"/"o:" markers.
    stored = {"base_model": MODEL, "seen_event_ids": ["l:learning-1", "o:outcome-2"]}
    state = ImprovementState.model_validate(stored)
    c = cfg(learnings_threshold=1000)
    step(state, ev("learning", 1, pattern_id="p"), c, T0)
    step(state, ev("outcome", 2, success=True), c, T0)
    assert (state.learnings_total, state.scored_total) == (0, 0)
    again = ImprovementState.model_validate_json(state.model_dump_json())
    assert again.seen_event_ids == state.seen_event_ids
