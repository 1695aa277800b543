"""What each agent sends per batch or record, as pure functions: no broker, no model."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from learnstream.core.settings import TriggerSettings
from schemas.dlq import DeadLetter
from schemas.pattern import LearnedPattern, Pattern
from schemas.topics import (
    DLQ,
    INTERACTIONS_SCORED,
    PATTERNS_CANDIDATES,
    PATTERNS_LEARNED,
    TRAINING_TRIGGERS,
)
from streams.agents.extract import learned_outputs, parse_candidates
from streams.agents.outputs import dead_letter_outputs
from streams.agents.score import batch_outputs, scored_outputs
from streams.agents.triggers import (
    fold,
    improvement_output,
    redirect_location,
    trigger_outputs,
)
from tests.unit.test_extract_support import candidate
from trainers.triggers import ImprovementEvent, ImprovementState

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass
class Rec:
    """A record as the extract agent reads it (a Faust message has these fields)."""

    value: bytes | None
    offset: int = 0
    key: bytes | None = b"k"
    topic: str = PATTERNS_CANDIDATES.name
    partition: int = 0


def letter(value: bytes = b"{bad", key: bytes | None = b"key-1") -> DeadLetter:
    return DeadLetter.from_bytes(
        value, key=key, topic="telemetry.aidb", partition=1, offset=9, stage="score", error="x"
    )


# --- score -----------------------------------------------------------------------------------


def test_a_high_value_interaction_goes_to_scored_and_candidates() -> None:
    s = candidate("e-hv", score=0.9)
    out = scored_outputs(s)
    assert [o.topic for o in out] == [INTERACTIONS_SCORED.name, PATTERNS_CANDIDATES.name]
    assert {o.key for o in out} == {b"e-hv"}
    assert out[0].value == out[1].value == s.model_dump_json().encode()
    headers = dict(out[0].headers or [])
    assert headers["source"] == b"aidb" and headers["event_type"] == b"completion"


def test_a_low_value_interaction_goes_to_scored_only() -> None:
    out = scored_outputs(candidate("e-low", score=0.2))
    assert [(o.topic, o.key) for o in out] == [(INTERACTIONS_SCORED.name, b"e-low")]


def test_a_batch_sends_each_interaction_in_order_then_its_dead_letters() -> None:
    dead = letter()
    out = batch_outputs([candidate("a", score=0.9), candidate("b", score=0.1)], [dead])
    assert [(o.topic, o.key) for o in out] == [
        (INTERACTIONS_SCORED.name, b"a"),
        (PATTERNS_CANDIDATES.name, b"a"),
        (INTERACTIONS_SCORED.name, b"b"),
        (DLQ.name, b"key-1"),
    ]
    assert DeadLetter.model_validate_json(out[-1].value) == dead
    assert batch_outputs([]) == []


def test_dead_letters_are_keyed_by_the_original_key() -> None:
    [keyed] = dead_letter_outputs([letter()])
    assert keyed.key == b"key-1"
    assert dict(keyed.headers or [])["event_type"] == b"dead_letter"
    [unkeyed] = dead_letter_outputs([letter(key=None)])
    assert unkeyed.key is None
    assert base64.b64decode(DeadLetter.model_validate_json(unkeyed.value).original_b64) == b"{bad"


# --- extract ---------------------------------------------------------------------------------


def test_candidates_parse_in_order_and_invalid_ones_become_dead_letters() -> None:
    a, b = candidate("a"), candidate("b")
    records = [
        Rec(a.model_dump_json().encode(), 0),
        Rec(b"not json", 1, key=b"kx"),
        Rec(None, 2, key=None),
        Rec(b.model_dump_json().encode(), 3),
    ]
    batch, dead = parse_candidates(records)
    assert [s.interaction.event_id for s in batch] == ["a", "b"]
    assert [(d.stage, d.offset, d.topic, d.error_kind) for d in dead] == [
        ("extract", 1, PATTERNS_CANDIDATES.name, "invalid"),
        ("extract", 2, PATTERNS_CANDIDATES.name, "invalid"),
    ]
    assert dead[0].original() == b"not json"
    assert dead[0].error.startswith("not a ScoredInteraction")
    assert [o.key for o in dead_letter_outputs(dead)] == [b"kx", None]


def _result(event_id: str, status: str) -> object:
    from extractors.stage import ExtractionResult

    pattern = Pattern(pattern_id=f"p-{event_id}", name="n", description="d")
    learned = None
    if status != "refused":  # a duplicate carries the pattern it was already folded into
        kind = "merged" if status == "merged" else "new"
        learned = LearnedPattern(pattern=pattern, status=kind, event_id=event_id)
    return ExtractionResult(event_id, status, learned, False, "heuristic")  # type: ignore[arg-type]


def test_only_new_and_merged_patterns_are_published() -> None:
    results = [_result("a", "new"), _result("b", "duplicate"), _result("c", "merged")]
    results.append(_result("d", "refused"))
    out = learned_outputs(results)  # type: ignore[arg-type]
    assert [(o.topic, o.key) for o in out] == [
        (PATTERNS_LEARNED.name, b"p-a"),
        (PATTERNS_LEARNED.name, b"p-c"),
    ]
    assert [dict(o.headers or [])["event_type"] for o in out] == [
        b"pattern_new",
        b"pattern_merged",
    ]
    assert LearnedPattern.model_validate_json(out[1].value).event_id == "c"


# --- triggers --------------------------------------------------------------------------------


def manual(base_model: str = "org/m") -> ImprovementEvent:
    return ImprovementEvent(kind="manual", base_model=base_model, at=NOW, requested_by="me")


def test_improvement_events_are_keyed_by_base_model() -> None:
    event = manual("org/a")
    out = improvement_output(event, "app-improvement")
    assert (out.topic, out.key) == ("app-improvement", b"org/a")
    assert ImprovementEvent.model_validate_json(out.value) == event


def test_fold_stores_the_state_and_sends_a_trigger_when_a_rule_fires() -> None:
    cfg = TriggerSettings(min_dataset_size=0)
    first = fold(None, manual(), cfg, NOW)
    assert first.trigger is not None
    [out] = first.outputs
    assert (out.topic, out.key) == (TRAINING_TRIGGERS.name, b"org/m")
    assert json.loads(out.value)["trigger_id"] == first.trigger.trigger_id
    assert ImprovementState.model_validate_json(first.stored).pending_trigger_id == (
        first.trigger.trigger_id
    )
    # From the stored state: the trigger is still pending, so a second request sends nothing.
    again = fold(first.stored, manual(), cfg, NOW)
    assert again.trigger is None and again.outputs == []
    assert "pending" in again.why


def test_no_trigger_no_output() -> None:
    assert trigger_outputs(None) == []


def test_a_request_for_another_workers_state_is_redirected_there() -> None:
    path = "/api/v1/improvement/status?base_model=org%2Fm"
    here = "http://127.0.0.1:6066"
    assert redirect_location("http://127.0.0.1:7077", here, path) == f"http://127.0.0.1:7077{path}"
    assert redirect_location("http://127.0.0.1:6066/", here, path) is None  # this worker
    assert redirect_location(None, here, path) is None  # nobody owns it yet
