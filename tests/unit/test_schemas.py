"""Event schemas: every source's event types, valid and invalid, and the errors they give."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import EVENT_MODELS, EventError, Source, event_types, parse_event
from tests.unit.events import CASES, VALID, event


def test_every_model_has_a_valid_case() -> None:
    assert {s: sorted(VALID[s]) for s in VALID} == {s.value: event_types(s) for s in Source}


@pytest.mark.parametrize(("source", "event_type"), CASES)
def test_valid_event_parses_from_bytes(source: str, event_type: str) -> None:
    raw = json.dumps(event(source, event_type)).encode()
    parsed = parse_event(source, raw)
    assert parsed.event_type == event_type
    assert Source(source) == parsed.SOURCE
    assert parsed.timestamp == datetime(2026, 11, 2, 9, 14, 5, tzinfo=UTC)
    # The wire form parses back to an equal event.
    assert parse_event(source, parsed.to_wire()) == parsed


@pytest.mark.parametrize(("source", "event_type"), CASES)
def test_missing_timestamp_is_rejected_naming_field(source: str, event_type: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(source, event(source, event_type, timestamp=None))
    assert info.value.fields == ("timestamp",)
    assert f"{source}.{event_type}: field 'timestamp': Field required" in info.value.reason


@pytest.mark.parametrize(
    ("source", "event_type", "field", "bad"),
    [
        ("ralph", "task_completed", "iteration", "three"),
        ("ralph", "iteration_started", "iteration", -1),
        ("ralph", "task_submitted", "prompt", 42),
        ("aidb", "completion", "tokens_input", -5),
        ("aidb", "tool_invocation", "arguments", "not-a-dict"),
        ("hybrid", "route_decided", "route", "sideways"),
        ("hybrid", "route_decided", "confidence_score", 1.5),
        ("vscode", "completion", "user_feedback", 2),
        ("vscode", "feedback", "user_feedback", "up"),
    ],
)
def test_wrong_type_names_field_and_value(
    source: str, event_type: str, field: str, bad: object
) -> None:
    with pytest.raises(EventError) as info:
        parse_event(source, event(source, event_type, **{field: bad}))
    err = info.value
    assert err.source == source
    assert err.event_type == event_type
    assert field in err.fields
    assert f"field '{field}'" in err.reason
    assert repr(bad) in err.reason


@pytest.mark.parametrize(
    ("source", "event_type", "field"),
    [
        ("ralph", "task_completed", "task_id"),
        ("ralph", "task_completed", "prompt"),
        ("aidb", "query", "query"),
        ("aidb", "error", "error"),
        ("hybrid", "route_decided", "route"),
        ("vscode", "feedback", "user_feedback"),
    ],
)
def test_missing_required_field(source: str, event_type: str, field: str) -> None:
    with pytest.raises(EventError, match=f"field '{field}': Field required"):
        parse_event(source, event(source, event_type, **{field: None}))


def test_nested_field_errors_give_the_path() -> None:
    data = event("ralph", "task_completed", context={"files_modified": "auth.py"})
    with pytest.raises(EventError) as info:
        parse_event("ralph", data)
    assert info.value.fields == ("context.files_modified",)


@pytest.mark.parametrize(
    ("raw", "kind", "needle"),
    [
        (b'{"event": "task_completed", ', "malformed", "malformed JSON at line 1"),
        (b"not json at all", "malformed", "malformed JSON"),
        (b"\xff\xfe{}", "malformed", "not UTF-8"),
        (b"[1, 2]", "malformed", "must be a JSON object, got list"),
        (b'"a string"', "malformed", "must be a JSON object, got str"),
        (b'{"timestamp": "2026-11-02T09:14:05Z"}', "invalid", "no 'event_type' (or 'event')"),
        (b'{"event": "task_exploded", "task_id": "t"}', "unknown_type", "unknown ralph event type"),
        (b'{"event": 7, "task_id": "t"}', "unknown_type", "unknown ralph event type 7"),
    ],
)
def test_bad_input_gets_a_clear_error(raw: bytes, kind: str, needle: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event("ralph", raw)
    assert info.value.kind == kind
    assert needle in info.value.reason


def test_unknown_event_type_lists_the_valid_ones() -> None:
    with pytest.raises(EventError) as info:
        parse_event("vscode", {"event_type": "telepathy", "timestamp": "2026-11-02T09:14:05Z"})
    assert "expected one of: completion, completion_accepted" in info.value.reason


def test_unknown_source() -> None:
    with pytest.raises(EventError, match="unknown source 'emacs'; expected one of: ralph"):
        parse_event("emacs", b"{}")


def test_oversized_payload_is_rejected_before_parsing() -> None:
    data = event("aidb", "completion", response="x" * 5000)
    raw = json.dumps(data).encode()
    with pytest.raises(EventError) as info:
        parse_event("aidb", raw, max_bytes=1024)
    assert info.value.kind == "oversized"
    assert f"{len(raw)} bytes, over the limit of 1024 bytes" in info.value.reason
    assert parse_event("aidb", raw, max_bytes=len(raw)).event_type == "completion"


def test_unknown_fields_are_kept_and_written_back() -> None:
    data = event("aidb", "completion", gpu="A100", nested={"a": [1, 2]})
    parsed = parse_event("aidb", data)
    assert parsed.model_extra == {"gpu": "A100", "nested": {"a": [1, 2]}}
    wire = json.loads(parsed.to_wire())
    assert wire["gpu"] == "A100"
    assert wire["nested"] == {"a": [1, 2]}


def test_event_alias_is_accepted_and_written_as_event_type() -> None:
    parsed = parse_event("ralph", event("ralph", "task_completed"))
    wire = json.loads(parsed.to_wire())
    assert wire["event_type"] == "task_completed"
    assert "event" not in wire
    also = parse_event(
        "ralph",
        {
            **VALID["ralph"]["iteration_started"],
            "event_type": "iteration_started",
            "timestamp": "2026-11-02T09:14:05Z",
        },
    )
    assert also.event_type == "iteration_started"


def test_wire_form_leaves_out_unset_defaults() -> None:
    parsed = parse_event("ralph", event("ralph", "iteration_started"))
    assert set(json.loads(parsed.to_wire())) == {"event_type", "task_id", "iteration", "timestamp"}


@pytest.mark.parametrize(
    ("source", "event_type", "changes", "key"),
    [
        ("ralph", "iteration_started", {}, "t1"),
        ("aidb", "query", {}, "s1"),
        ("aidb", "error", {"request_id": "r9"}, "r9"),
        ("aidb", "error", {"event_id": "e1"}, "e1"),
        ("hybrid", "route_decided", {"conversation_id": "c1", "session_id": "s2"}, "c1"),
        ("hybrid", "route_decided", {"session_id": "s2"}, "s2"),
        ("vscode", "feedback", {}, "v1"),
    ],
)
def test_record_key_follows_the_source(
    source: str, event_type: str, changes: dict[str, str], key: str
) -> None:
    assert parse_event(source, event(source, event_type, **changes)).record_key() == key


def test_naive_and_offset_timestamps_become_utc() -> None:
    naive = parse_event(
        "ralph", event("ralph", "iteration_started", timestamp="2026-11-02T09:14:05")
    )
    offset = parse_event(
        "ralph", event("ralph", "iteration_started", timestamp="2026-11-02T11:14:05+02:00")
    )
    assert naive.timestamp == offset.timestamp == datetime(2026, 11, 2, 9, 14, 5, tzinfo=UTC)
    assert offset.timestamp.tzinfo == UTC


def test_model_of_other_source_is_refused() -> None:
    model = parse_event("ralph", event("ralph", "iteration_started"))
    with pytest.raises(EventError, match="a ralph event cannot be sent as source 'aidb'"):
        parse_event("aidb", model)


def test_event_models_registry_covers_the_issue_list() -> None:
    assert set(EVENT_MODELS[Source.RALPH]) >= {
        "task_submitted",
        "iteration_started",
        "iteration_completed",
        "exit_code_blocked",
        "task_completed",
        "task_failed",
        "checkpoint_saved",
    }
    assert set(EVENT_MODELS[Source.AIDB]) >= {
        "query",
        "completion",
        "query_completion",
        "error",
        "cache_hit",
        "context_augmentation",
        "tool_invocation",
    }
    assert set(EVENT_MODELS[Source.HYBRID]) >= {
        "context_augmented",
        "route_decided",
        "learning_triggered",
        "pattern_stored",
        "dataset_updated",
    }
    assert "completion" in EVENT_MODELS[Source.VSCODE]
