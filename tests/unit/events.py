"""A minimal valid event of every source and type, for table-driven tests."""

from __future__ import annotations

from typing import Any

TS = "2026-11-02T09:14:05Z"

VALID: dict[str, dict[str, dict[str, Any]]] = {
    "ralph": {
        "task_submitted": {"task_id": "t1", "prompt": "Add JWT auth"},
        "iteration_started": {"task_id": "t1", "iteration": 1},
        "iteration_completed": {"task_id": "t1", "iteration": 1, "exit_code": 0},
        "exit_code_blocked": {"task_id": "t1", "iteration": 2, "exit_code": 2},
        "task_completed": {
            "task_id": "t1",
            "prompt": "Add JWT auth",
            "output": "Added JWT auth",
            "iteration": 3,
            "exit_code": 0,
            "context": {"files_modified": ["auth.py"], "lines_changed": 245, "tests_passed": True},
        },
        "task_failed": {"task_id": "t1", "prompt": "Add JWT auth", "iteration": 10, "error": "max"},
        "checkpoint_saved": {"task_id": "t1", "iteration": 2, "checkpoint_path": "/tmp/c"},
    },
    "aidb": {
        "query": {"query": "How to configure NixOS networking?", "session_id": "s1"},
        "completion": {"query": "q", "response": "r", "success": True, "llm_used": "local"},
        "query_completion": {"query": "q", "tokens_input": 450, "latency_ms": 360},
        "error": {"query": "q", "error": "timeout"},
        "cache_hit": {"query": "q", "cache_key": "k"},
        "context_augmentation": {"query": "q", "collections": ["docs"], "results": 5},
        "tool_invocation": {"tool_name": "search", "arguments": {"q": "x"}},
    },
    "hybrid": {
        "context_augmented": {"query": "q", "context_used": ["best-practices"]},
        "route_decided": {
            "query": "Explain quantum computing",
            "route": "remote",
            "confidence_score": 0.62,
        },
        "learning_triggered": {"reason": "high value", "value_score": 0.8},
        "pattern_stored": {"pattern_id": "p1", "collection": "skills-patterns"},
        "dataset_updated": {"examples_added": 1, "total_examples": 10},
    },
    "vscode": {
        "completion": {
            "extension": "continue",
            "model_used": "qwen",
            "success": True,
            "user_feedback": 1,
            "context": {"file": "server.py", "cursor_line": 42},
        },
        "completion_accepted": {"session_id": "v1", "accepted_chars": 12},
        "completion_rejected": {"session_id": "v1"},
        "feedback": {"session_id": "v1", "user_feedback": -1},
        "session_started": {"session_id": "v1", "workspace": "/w"},
        "session_ended": {"session_id": "v1", "duration_ms": 1000},
    },
}

# Ralph and the hybrid coordinator call the type field "event" in their own files.
TYPE_FIELD = {"ralph": "event", "hybrid": "event", "aidb": "event_type", "vscode": "event_type"}


def event(source: str, event_type: str, **changes: Any) -> dict[str, Any]:
    """A valid event of that type, with ``changes`` applied (None removes a field)."""
    data = {TYPE_FIELD[source]: event_type, "timestamp": TS, **VALID[source][event_type]}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


CASES = [(s, t) for s, types in VALID.items() for t in types]
