"""Shared base classes for learnstream's pydantic models."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


class Source(StrEnum):
    """The four tools that publish telemetry."""

    RALPH = "ralph"
    AIDB = "aidb"
    HYBRID = "hybrid"
    VSCODE = "vscode"


def _as_utc(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Model(BaseModel):
    """Base for learnstream's own records: strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)


class SourceEvent(BaseModel):
    """Base for every tool's event.

    Unknown fields are kept (tools add fields faster than schemas change). Ralph and the hybrid
    coordinator name the type field ``event``; AIDB and VSCode name it ``event_type``. Both are
    accepted and ``event_type`` is what is written back.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    SOURCE: ClassVar[Source]
    # Fields tried in order for the Kafka record key; the event id is the last resort.
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ()

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    event_type: str
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Stable id: a UUID from the SDK, or derived from file and offset by a tailer.",
    )
    timestamp: UtcDatetime

    @model_validator(mode="before")
    @classmethod
    def _accept_event_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_type" not in data and "event" in data:
            data = dict(data)
            data["event_type"] = data.pop("event")
        return data

    def to_wire(self) -> bytes:
        """The record value: the event as the tool sent it (unset defaults left out), UTF-8 JSON."""
        return self.model_dump_json(exclude_unset=True).encode()

    def record_key(self) -> str:
        """The Kafka key that keeps one task, session or conversation on one partition."""
        for name in self.KEY_FIELDS:
            value = getattr(self, name, None)
            if value:
                return str(value)
        return self.event_id or ""


class InteractionSignals(BaseModel):
    """Optional user signals that any interaction-closing event may carry."""

    user_feedback: int | None = Field(
        default=None, ge=-1, le=1, description="Explicit feedback: 1 thumbs up, -1 down, 0 none."
    )
    copied_to_clipboard: bool | None = None
    modified_response: bool | None = None
    patterns_used: list[str] = Field(
        default_factory=list, description="Ids of skill patterns the tool applied."
    )
