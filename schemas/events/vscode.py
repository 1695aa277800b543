"""Events of the VSCode extension (``vscode-events.jsonl``).

Type field ``event_type``. Key: ``session_id``, else the event id.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import InteractionSignals, Source, SourceEvent


class EditorContext(BaseModel):
    """Where in the editor the interaction happened; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    file: str | None = None
    language: str | None = None
    cursor_line: int | None = Field(default=None, ge=0)
    files_modified: list[str] = Field(default_factory=list)


class VscodeEvent(SourceEvent):
    """Base of every VSCode event."""

    SOURCE: ClassVar[Source] = Source.VSCODE
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("session_id",)

    session_id: str | None = None
    extension: str | None = None


class Completion(VscodeEvent, InteractionSignals):
    """A completion or chat answer was shown to the user."""

    event_type: Literal["completion"]
    model_used: str | None = None
    is_local: bool | None = None
    prompt: str | None = None
    completion: str | None = None
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    success: bool | None = True
    partial_success: bool = False
    steps: int | None = Field(default=None, ge=0)
    tools_used: list[str] = Field(default_factory=list)
    context: EditorContext = Field(default_factory=EditorContext)


class CompletionAccepted(VscodeEvent):
    """The user accepted a completion."""

    event_type: Literal["completion_accepted"]
    completion_id: str | None = None
    accepted_chars: int | None = Field(default=None, ge=0)


class CompletionRejected(VscodeEvent):
    """The user dismissed a completion."""

    event_type: Literal["completion_rejected"]
    completion_id: str | None = None


class Feedback(VscodeEvent):
    """Explicit feedback given after the fact on an earlier event."""

    event_type: Literal["feedback"]
    target_event_id: str | None = None
    user_feedback: int = Field(ge=-1, le=1)
    comment: str | None = None


class SessionStarted(VscodeEvent):
    """An editor session began."""

    event_type: Literal["session_started"]
    workspace: str | None = None


class SessionEnded(VscodeEvent):
    """An editor session ended."""

    event_type: Literal["session_ended"]
    duration_ms: float | None = Field(default=None, ge=0)


EVENTS: tuple[type[VscodeEvent], ...] = (
    Completion,
    CompletionAccepted,
    CompletionRejected,
    Feedback,
    SessionStarted,
    SessionEnded,
)
