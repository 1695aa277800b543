"""The normalizer: every source's event mapped to the `Interaction` the value score reads.

Events that close an interaction are *scorable*; every other event is a *lifecycle* event,
normalized with ``scorable=False`` (so it can be stored next to the scored ones) and never
scored. For every event, whatever its type:

- ``event_id`` is the event's own id (an event without one is rejected with `ValueError`;
  the SDK and the file tailers always assign one),
- ``source``, ``event_type`` and ``timestamp`` are copied,
- ``key`` is ``event.record_key()`` (task, session or conversation id),
- ``payload`` is the event as sent: ``event.model_dump(mode="json", exclude_unset=True)``,
  unknown fields included.

Scored events and how their fields map (``a.b`` is field ``b`` of the event's ``a`` object;
"signals" are ``user_feedback``, ``copied_to_clipboard``, ``modified_response`` and
``patterns_used``, taken from the event when present; absent flags are false):

| source | event type | scored when | query | response | outcome | iterations | steps, tools_used, files_modified | signals | model, latency_ms |
|---|---|---|---|---|---|---|---|---|---|
| ralph | `task_completed` | always | `prompt` | `output` | success | `iteration` | `context.steps`, `context.tools_used`, `context.files_modified` | yes | `backend`, `duration_ms` |
| ralph | `task_failed` | always | `prompt` | `output` | partial if `partial_success`, else failure | `iteration` | `context.steps`, `context.tools_used`, `context.files_modified` | yes | `backend`, — |
| aidb | `completion`, `query_completion` | always | `query` | `response` | partial if `partial_success`; else `success`: true → success, false → failure, null → unknown | `iterations` | `steps`, `tools_used`, `files_modified` | yes | `model`, `latency_ms` |
| aidb | `error` | always | `query` | — | failure | — | — | yes | `model`, `latency_ms` |
| hybrid | `route_decided` | `success` is not null or `partial_success` is true | `query` | `response` | as for aidb `completion` | `iterations` | `steps`, `tools_used`, — | yes | `model`, `latency_ms` |
| vscode | `completion` | always | `prompt` | `completion` | as for aidb `completion` | — | `steps`, `tools_used`, `context.files_modified` | yes | `model_used`, `latency_ms` |

Ralph's ``exit_code`` and ``error`` and AIDB's ``error``/``error_type`` are kept in the payload;
the event type already says how the interaction ended. A missing ``iteration``/``iterations``
stays null (the outcome factor counts it as 1).

Lifecycle events (``scorable`` false, outcome ``unknown``); fields filled when the event has them:

| source | event type | fields filled |
|---|---|---|
| ralph | `task_submitted` | query ← `prompt`; model ← `backend`; steps, tools_used, files_modified ← `context` |
| ralph | `iteration_started`, `exit_code_blocked`, `checkpoint_saved` | iterations ← `iteration` |
| ralph | `iteration_completed` | response ← `output`; iterations ← `iteration`; latency_ms ← `duration_ms` |
| aidb | `query` | query |
| aidb | `cache_hit`, `context_augmentation` | query; latency_ms |
| aidb | `tool_invocation` | query; tools_used ← [`tool_name`]; latency_ms |
| hybrid | `route_decided` without an outcome | as in the scored row, outcome unknown |
| hybrid | `context_augmented`, `learning_triggered` | query |
| hybrid | `pattern_stored`, `dataset_updated` | — |
| vscode | `feedback` | user_feedback |
| vscode | `completion_accepted`, `completion_rejected`, `session_started`, `session_ended` | — |
"""  # noqa: E501

from __future__ import annotations

from typing import Any

from schemas.base import InteractionSignals, SourceEvent
from schemas.events import aidb, hybrid, ralph, vscode
from schemas.interaction import Interaction, Outcome

__all__ = ["is_scorable", "normalize"]


def _outcome(success: bool | None, partial_success: bool) -> Outcome:
    """Outcome from ``success``/``partial_success``: partial wins, then true/false/null."""
    if partial_success:
        return Outcome.PARTIAL
    if success is None:
        return Outcome.UNKNOWN
    return Outcome.SUCCESS if success else Outcome.FAILURE


def _signals(event: InteractionSignals) -> dict[str, Any]:
    return {
        "user_feedback": event.user_feedback,
        "copied_to_clipboard": bool(event.copied_to_clipboard),
        "modified_response": bool(event.modified_response),
        "patterns_used": list(event.patterns_used),
    }


def _ralph_context(context: ralph.RalphContext) -> dict[str, Any]:
    return {
        "steps": context.steps,
        "tools_used": list(context.tools_used),
        "files_modified": list(context.files_modified),
    }


def is_scorable(event: SourceEvent) -> bool:
    """Whether ``event`` closes an interaction and so gets a value score (see the table above)."""
    if isinstance(event, ralph.TaskCompleted | ralph.TaskFailed | aidb.Completion | aidb.Error):
        return True
    if isinstance(event, hybrid.RouteDecided):
        return event.success is not None or event.partial_success
    return isinstance(event, vscode.Completion)


def _fields(event: SourceEvent) -> dict[str, Any]:
    """The source-specific `Interaction` fields of ``event`` (everything but the common ones)."""
    # Ralph
    if isinstance(event, ralph.TaskCompleted):
        return {
            "query": event.prompt,
            "response": event.output,
            "outcome": Outcome.SUCCESS,
            "iterations": event.iteration,
            "model": event.backend,
            "latency_ms": event.duration_ms,
            **_ralph_context(event.context),
            **_signals(event),
        }
    if isinstance(event, ralph.TaskFailed):
        return {
            "query": event.prompt,
            "response": event.output,
            "outcome": Outcome.PARTIAL if event.partial_success else Outcome.FAILURE,
            "iterations": event.iteration,
            "model": event.backend,
            **_ralph_context(event.context),
            **_signals(event),
        }
    if isinstance(event, ralph.TaskSubmitted):
        return {"query": event.prompt, "model": event.backend, **_ralph_context(event.context)}
    if isinstance(event, ralph.IterationCompleted):
        return {
            "response": event.output,
            "iterations": event.iteration,
            "latency_ms": event.duration_ms,
        }
    if isinstance(event, ralph.IterationStarted | ralph.ExitCodeBlocked | ralph.CheckpointSaved):
        return {"iterations": event.iteration}
    # AIDB
    if isinstance(event, aidb.Completion):
        return {
            "query": event.query,
            "response": event.response,
            "outcome": _outcome(event.success, event.partial_success),
            "iterations": event.iterations,
            "steps": event.steps,
            "tools_used": list(event.tools_used),
            "files_modified": list(event.files_modified),
            "model": event.model,
            "latency_ms": event.latency_ms,
            **_signals(event),
        }
    if isinstance(event, aidb.Error):
        return {
            "query": event.query,
            "outcome": Outcome.FAILURE,
            "model": event.model,
            "latency_ms": event.latency_ms,
            **_signals(event),
        }
    if isinstance(event, aidb.Query):
        return {"query": event.query}
    if isinstance(event, aidb.CacheHit | aidb.ContextAugmentation):
        return {"query": event.query, "latency_ms": event.latency_ms}
    if isinstance(event, aidb.ToolInvocation):
        return {
            "query": event.query,
            "tools_used": [event.tool_name],
            "latency_ms": event.latency_ms,
        }
    # Hybrid coordinator
    if isinstance(event, hybrid.RouteDecided):
        return {
            "query": event.query,
            "response": event.response,
            "outcome": _outcome(event.success, event.partial_success),
            "iterations": event.iterations,
            "steps": event.steps,
            "tools_used": list(event.tools_used),
            "model": event.model,
            "latency_ms": event.latency_ms,
            **_signals(event),
        }
    if isinstance(event, hybrid.ContextAugmented | hybrid.LearningTriggered):
        return {"query": event.query}
    # VSCode
    if isinstance(event, vscode.Completion):
        return {
            "query": event.prompt,
            "response": event.completion,
            "outcome": _outcome(event.success, event.partial_success),
            "steps": event.steps,
            "tools_used": list(event.tools_used),
            "files_modified": list(event.context.files_modified),
            "model": event.model_used,
            "latency_ms": event.latency_ms,
            **_signals(event),
        }
    if isinstance(event, vscode.Feedback):
        return {"user_feedback": event.user_feedback}
    # Remaining lifecycle events (hybrid pattern_stored/dataset_updated, VSCode accept/reject and
    # session events) carry nothing the score reads.
    return {}


def normalize(event: SourceEvent) -> Interaction:
    """Map a validated source event to an `Interaction` (see the module docstring's tables).

    Scorable events (those that close an interaction) come back with ``scorable=True``; all
    others with ``scorable=False`` and outcome ``unknown``. Raises `ValueError` when the event
    has no ``event_id``.
    """
    if not event.event_id:
        raise ValueError(
            f"{event.SOURCE.value}.{event.event_type} event has no event_id; "
            "the producer must assign one before it can be normalized"
        )
    scorable = is_scorable(event)
    fields = _fields(event)
    if not scorable:
        fields["outcome"] = Outcome.UNKNOWN
    return Interaction(
        event_id=event.event_id,
        source=event.SOURCE,
        event_type=event.event_type,
        key=event.record_key(),
        timestamp=event.timestamp,
        scorable=scorable,
        payload=event.model_dump(mode="json", exclude_unset=True),
        **fields,
    )
