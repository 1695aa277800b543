"""The normalizer: every source and event type mapped to an `Interaction`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import Interaction, Outcome, Source, parse_event
from scorers.normalize import is_scorable, normalize
from tests.conftest import EXAMPLES
from tests.unit.events import CASES, event

SCORABLE = {
    ("ralph", "task_completed"),
    ("ralph", "task_failed"),
    ("aidb", "completion"),
    ("aidb", "query_completion"),
    ("aidb", "error"),
    ("vscode", "completion"),
}


def norm(source: str, event_type: str, **changes: Any) -> Interaction:
    """Normalize the minimal valid event of that type, with ``changes`` and an event id."""
    changes.setdefault("event_id", f"{source}-{event_type}-1")
    return normalize(parse_event(source, event(source, event_type, **changes)))


@pytest.mark.parametrize(("source", "event_type"), CASES)
def test_every_event_type_normalizes(source: str, event_type: str) -> None:
    raw = event(source, event_type, event_id="ev-42")
    parsed = parse_event(source, raw)
    i = normalize(parsed)
    assert i.event_id == "ev-42"
    assert i.source is Source(source)
    assert i.event_type == event_type
    assert i.key == parsed.record_key()
    assert i.timestamp == datetime(2026, 11, 2, 9, 14, 5, tzinfo=UTC)
    # The minimal hybrid route_decided has no outcome, so it is a lifecycle event.
    assert i.scorable is ((source, event_type) in SCORABLE)
    assert is_scorable(parsed) is i.scorable
    if not i.scorable:
        assert i.outcome is Outcome.UNKNOWN
    # The payload is the event as sent, under the canonical type field.
    assert i.payload == parsed.model_dump(mode="json", exclude_unset=True)
    assert i.payload["event_type"] == event_type
    assert i.payload["event_id"] == "ev-42"
    # The result is a valid Interaction that survives a JSON round trip.
    assert Interaction.model_validate_json(i.model_dump_json()) == i


@pytest.mark.parametrize(("source", "event_type"), CASES)
def test_event_without_id_is_rejected(source: str, event_type: str) -> None:
    parsed = parse_event(source, event(source, event_type))
    with pytest.raises(ValueError, match="no event_id"):
        normalize(parsed)


# --- Ralph -----------------------------------------------------------------------------------


def test_ralph_task_completed() -> None:
    i = norm(
        "ralph",
        "task_completed",
        backend="aider",
        duration_ms=103900,
        context={
            "files_modified": ["a.py", "b.py"],
            "tools_used": ["pytest"],
            "steps": 4,
            "lines_changed": 10,
        },
        user_feedback=1,
        copied_to_clipboard=True,
        patterns_used=["pat-1"],
    )
    assert i.scorable
    assert i.key == "t1"
    assert i.query == "Add JWT auth"
    assert i.response == "Added JWT auth"
    assert i.outcome is Outcome.SUCCESS
    assert i.iterations == 3
    assert i.files_modified == ["a.py", "b.py"]
    assert i.tools_used == ["pytest"]
    assert i.steps == 4
    assert i.user_feedback == 1
    assert i.copied_to_clipboard is True
    assert i.modified_response is False
    assert i.patterns_used == ["pat-1"]
    assert i.model == "aider"
    assert i.latency_ms == 103900


def test_ralph_task_completed_without_iteration_or_signals() -> None:
    i = norm("ralph", "task_completed", iteration=None, context={})
    assert i.iterations is None
    assert i.user_feedback is None
    assert (i.copied_to_clipboard, i.modified_response, i.patterns_used) == (False, False, [])
    assert (i.steps, i.tools_used, i.files_modified) == (None, [], [])


def test_ralph_task_failed_is_failure() -> None:
    i = norm("ralph", "task_failed", output="gave up", modified_response=True)
    assert i.scorable
    assert i.outcome is Outcome.FAILURE
    assert i.iterations == 10
    assert i.query == "Add JWT auth"
    assert i.response == "gave up"
    assert i.modified_response is True


def test_ralph_task_failed_with_partial_success_is_partial() -> None:
    i = norm("ralph", "task_failed", partial_success=True, context={"steps": 2})
    assert i.outcome is Outcome.PARTIAL
    assert i.steps == 2


def test_ralph_lifecycle_events() -> None:
    submitted = norm("ralph", "task_submitted", backend="aider")
    assert not submitted.scorable
    assert submitted.query == "Add JWT auth"
    assert submitted.outcome is Outcome.UNKNOWN

    completed = norm("ralph", "iteration_completed", output="pytest: 11 passed", duration_ms=5)
    assert not completed.scorable
    assert completed.response == "pytest: 11 passed"
    assert completed.iterations == 1
    assert completed.latency_ms == 5
    assert completed.query is None

    blocked = norm("ralph", "exit_code_blocked")
    assert (blocked.scorable, blocked.iterations) == (False, 2)


# --- AIDB ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["completion", "query_completion"])
@pytest.mark.parametrize(
    ("success", "partial", "outcome"),
    [
        (True, False, Outcome.SUCCESS),
        (False, False, Outcome.FAILURE),
        (None, False, Outcome.UNKNOWN),
        (True, True, Outcome.PARTIAL),
        (False, True, Outcome.PARTIAL),
        (None, True, Outcome.PARTIAL),
    ],
)
def test_aidb_completion_outcome(
    event_type: str, success: bool | None, partial: bool, outcome: Outcome
) -> None:
    raw = event("aidb", event_type, event_id="a-1", partial_success=partial)
    raw["success"] = success  # event() drops None values; null must be sent explicitly here
    i = normalize(parse_event("aidb", raw))
    assert i.scorable
    assert i.outcome is outcome


def test_aidb_completion_fields() -> None:
    i = norm(
        "aidb",
        "completion",
        session_id="s-9",
        model="Qwen2.5-Coder-7B-Instruct",
        latency_ms=1840.5,
        iterations=2,
        steps=3,
        tools_used=["nix_search_options"],
        files_modified=["configuration.nix"],
        modified_response=True,
        patterns_used=["p1", "p2"],
    )
    assert i.key == "s-9"
    assert (i.query, i.response) == ("q", "r")
    assert i.outcome is Outcome.SUCCESS
    assert i.iterations == 2
    assert i.steps == 3
    assert i.tools_used == ["nix_search_options"]
    assert i.files_modified == ["configuration.nix"]
    assert i.model == "Qwen2.5-Coder-7B-Instruct"
    assert i.latency_ms == 1840.5
    assert i.modified_response is True
    assert i.patterns_used == ["p1", "p2"]


def test_query_completion_without_success_defaults_to_success() -> None:
    i = norm("aidb", "query_completion")
    assert i.outcome is Outcome.SUCCESS
    assert i.response is None


def test_aidb_error_is_failure() -> None:
    i = norm("aidb", "error", user_feedback=-1, model="m", latency_ms=30000)
    assert i.scorable
    assert i.outcome is Outcome.FAILURE
    assert i.query == "q"
    assert i.response is None
    assert i.user_feedback == -1
    assert (i.model, i.latency_ms) == ("m", 30000)


def test_aidb_lifecycle_events() -> None:
    query = norm("aidb", "query")
    assert (query.scorable, query.query, query.key) == (
        False,
        "How to configure NixOS networking?",
        "s1",
    )
    tool = norm("aidb", "tool_invocation", query="find options", success=True)
    assert not tool.scorable
    assert tool.outcome is Outcome.UNKNOWN
    assert tool.tools_used == ["search"]
    assert tool.query == "find options"
    cache = norm("aidb", "cache_hit", latency_ms=3)
    assert (cache.scorable, cache.query, cache.latency_ms) == (False, "q", 3)


# --- hybrid coordinator ----------------------------------------------------------------------


def test_route_decided_without_outcome_is_lifecycle() -> None:
    i = norm("hybrid", "route_decided", conversation_id="conv-1")
    assert not i.scorable
    assert i.outcome is Outcome.UNKNOWN
    assert i.query == "Explain quantum computing"
    assert i.key == "conv-1"


@pytest.mark.parametrize(
    ("success", "partial", "outcome"),
    [
        (True, False, Outcome.SUCCESS),
        (False, False, Outcome.FAILURE),
        (True, True, Outcome.PARTIAL),
        (None, True, Outcome.PARTIAL),
    ],
)
def test_route_decided_with_outcome_is_scored(
    success: bool | None, partial: bool, outcome: Outcome
) -> None:
    i = norm("hybrid", "route_decided", success=success, partial_success=partial)
    assert i.scorable
    assert i.outcome is outcome


def test_route_decided_fields() -> None:
    i = norm(
        "hybrid",
        "route_decided",
        success=True,
        response="Qubits ...",
        model="claude-sonnet-4-5",
        iterations=2,
        steps=3,
        tools_used=["web"],
        latency_ms=1720.0,
        copied_to_clipboard=True,
    )
    assert (i.query, i.response) == ("Explain quantum computing", "Qubits ...")
    assert (i.iterations, i.steps, i.tools_used) == (2, 3, ["web"])
    assert (i.model, i.latency_ms) == ("claude-sonnet-4-5", 1720.0)
    assert i.copied_to_clipboard is True


def test_hybrid_lifecycle_events() -> None:
    augmented = norm("hybrid", "context_augmented")
    assert (augmented.scorable, augmented.query) == (False, "q")
    stored = norm("hybrid", "pattern_stored")
    assert not stored.scorable
    assert (stored.query, stored.response) == (None, None)


# --- VSCode ----------------------------------------------------------------------------------


def test_vscode_completion() -> None:
    i = norm(
        "vscode",
        "completion",
        session_id="vs-1",
        prompt="def add(a, b):",
        completion="    return a + b",
        latency_ms=148.0,
        steps=2,
        tools_used=["lsp"],
        context={"file": "m.py", "files_modified": ["m.py", "n.py"]},
    )
    assert i.scorable
    assert i.key == "vs-1"
    assert i.query == "def add(a, b):"
    assert i.response == "    return a + b"
    assert i.outcome is Outcome.SUCCESS
    assert i.files_modified == ["m.py", "n.py"]
    assert (i.steps, i.tools_used) == (2, ["lsp"])
    assert i.model == "qwen"
    assert i.latency_ms == 148.0
    assert i.user_feedback == 1
    assert i.iterations is None


@pytest.mark.parametrize(
    ("success", "partial", "outcome"),
    [
        (True, False, Outcome.SUCCESS),
        (False, False, Outcome.FAILURE),
        (True, True, Outcome.PARTIAL),
    ],
)
def test_vscode_completion_outcome(success: bool, partial: bool, outcome: Outcome) -> None:
    assert norm("vscode", "completion", success=success, partial_success=partial).outcome is (
        outcome
    )


def test_vscode_lifecycle_events() -> None:
    feedback = norm("vscode", "feedback")
    assert not feedback.scorable
    assert feedback.user_feedback == -1
    assert feedback.key == "v1"
    started = norm("vscode", "session_started")
    assert not started.scorable
    assert started.query is None


def test_unknown_fields_are_kept_in_the_payload() -> None:
    i = norm("vscode", "completion", completion_id="cmpl-1", error="x")
    assert i.payload["completion_id"] == "cmpl-1"
    assert i.payload["error"] == "x"


# --- the example files -----------------------------------------------------------------------


def _closes_interaction(source: str, data: dict[str, Any]) -> bool:
    """Independent of the normalizer: which raw example lines are scored (docs/architecture.md,
    "Which events are scored")."""
    kind = data.get("event_type", data.get("event"))
    if source == "hybrid":
        return kind == "route_decided" and (
            data.get("success") is not None or bool(data.get("partial_success"))
        )
    return (source, kind) in SCORABLE


EXAMPLE_FILES = sorted(EXAMPLES.glob("*-events.jsonl"))


def test_every_source_has_an_example_file() -> None:
    assert {p.name.split("-")[0] for p in EXAMPLE_FILES} == {s.value for s in Source}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_line_normalizes(path: Path) -> None:
    source = path.name.split("-")[0]
    lines = path.read_text().splitlines()
    assert lines
    scored = 0
    for number, line in enumerate(lines, start=1):
        data = json.loads(line)
        data["event_id"] = f"{path.name}:{number}"
        i = normalize(parse_event(source, data))
        assert i.event_id == f"{path.name}:{number}"
        assert i.scorable is _closes_interaction(source, data), line
        if i.scorable:
            scored += 1
            assert i.query, line
    assert scored > 0
