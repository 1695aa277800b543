"""Events of Ralph, the autonomous coding loop (``ralph-events.jsonl``).

Ralph works a task through numbered iterations; exit code 2 blocks termination. The type field
is ``event`` in Ralph's own files (``event_type`` is accepted too). Key: ``task_id``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import InteractionSignals, Source, SourceEvent


class RalphContext(BaseModel):
    """What a task touched; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    files_modified: list[str] = Field(default_factory=list)
    lines_changed: int | None = Field(default=None, ge=0)
    tests_passed: bool | None = None
    tools_used: list[str] = Field(default_factory=list)
    steps: int | None = Field(default=None, ge=0)


class RalphEvent(SourceEvent):
    """Base of every Ralph event."""

    SOURCE: ClassVar[Source] = Source.RALPH
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("task_id",)

    task_id: str = Field(min_length=1)


class TaskSubmitted(RalphEvent):
    """A new task was added to the queue."""

    event_type: Literal["task_submitted"]
    prompt: str
    backend: str | None = None
    max_iterations: int | None = Field(default=None, ge=1)
    context: RalphContext = Field(default_factory=RalphContext)


class IterationStarted(RalphEvent):
    """A loop iteration began."""

    event_type: Literal["iteration_started"]
    iteration: int = Field(ge=0)


class IterationCompleted(RalphEvent):
    """A loop iteration ended."""

    event_type: Literal["iteration_completed"]
    iteration: int = Field(ge=0)
    exit_code: int | None = None
    output: str | None = None
    duration_ms: float | None = Field(default=None, ge=0)


class ExitCodeBlocked(RalphEvent):
    """Exit code 2 prevented the loop from terminating."""

    event_type: Literal["exit_code_blocked"]
    iteration: int = Field(ge=0)
    exit_code: int = 2
    reason: str | None = None


class TaskCompleted(RalphEvent, InteractionSignals):
    """The task finished successfully; ``iteration`` is how many iterations it took."""

    event_type: Literal["task_completed"]
    prompt: str
    output: str | None = None
    backend: str | None = None
    iteration: int | None = Field(default=None, ge=0)
    exit_code: int | None = 0
    duration_ms: float | None = Field(default=None, ge=0)
    context: RalphContext = Field(default_factory=RalphContext)


class TaskFailed(RalphEvent, InteractionSignals):
    """The task was abandoned (for example after the maximum number of iterations)."""

    event_type: Literal["task_failed"]
    prompt: str
    output: str | None = None
    backend: str | None = None
    iteration: int | None = Field(default=None, ge=0)
    exit_code: int | None = None
    error: str | None = None
    partial_success: bool = False
    context: RalphContext = Field(default_factory=RalphContext)


class CheckpointSaved(RalphEvent):
    """Loop state was persisted to disk."""

    event_type: Literal["checkpoint_saved"]
    iteration: int | None = Field(default=None, ge=0)
    checkpoint_path: str | None = None


EVENTS: tuple[type[RalphEvent], ...] = (
    TaskSubmitted,
    IterationStarted,
    IterationCompleted,
    ExitCodeBlocked,
    TaskCompleted,
    TaskFailed,
    CheckpointSaved,
)
