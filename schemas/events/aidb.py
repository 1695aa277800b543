"""Events of AIDB, the retrieval/query service (``aidb-events.jsonl``).

Type field ``event_type``. Key: ``session_id``, else ``request_id``, else the event id.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from schemas.base import InteractionSignals, Source, SourceEvent


class AidbEvent(SourceEvent):
    """Base of every AIDB event."""

    SOURCE: ClassVar[Source] = Source.AIDB
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("session_id", "request_id")

    session_id: str | None = None
    request_id: str | None = None


class Query(AidbEvent):
    """A user query was received."""

    event_type: Literal["query"]
    query: str = Field(min_length=1)
    user: str | None = None


class Completion(AidbEvent, InteractionSignals):
    """A query was answered (``completion``, or ``query_completion`` in older files)."""

    event_type: Literal["completion", "query_completion"]
    query: str = Field(min_length=1)
    response: str | None = None
    llm_used: str | None = Field(default=None, description="'local' or 'remote'.")
    model: str | None = None
    tokens_input: int | None = Field(default=None, ge=0)
    tokens_output: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    cache_hit: bool = False
    context_retrieved: bool | None = None
    qdrant_results: int | None = Field(default=None, ge=0)
    success: bool | None = True
    partial_success: bool = False
    iterations: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0)
    tools_used: list[str] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)


class Error(AidbEvent, InteractionSignals):
    """A query failed."""

    event_type: Literal["error"]
    query: str | None = None
    error: str = Field(min_length=1)
    error_type: str | None = None
    model: str | None = None
    latency_ms: float | None = Field(default=None, ge=0)


class CacheHit(AidbEvent):
    """A response was served from the cache."""

    event_type: Literal["cache_hit"]
    query: str | None = None
    cache_key: str | None = None
    latency_ms: float | None = Field(default=None, ge=0)


class ContextAugmentation(AidbEvent):
    """Context from Qdrant was added to a query."""

    event_type: Literal["context_augmentation"]
    query: str | None = None
    collections: list[str] = Field(default_factory=list)
    results: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)


class ToolInvocation(AidbEvent):
    """An MCP tool was called."""

    event_type: Literal["tool_invocation"]
    tool_name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    success: bool | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    query: str | None = None


EVENTS: tuple[type[AidbEvent], ...] = (
    Query,
    Completion,
    Error,
    CacheHit,
    ContextAugmentation,
    ToolInvocation,
)
