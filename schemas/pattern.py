"""Skill patterns and fine-tuning dataset examples."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Model, UtcDatetime, utcnow


class Pattern(Model):
    """A reusable skill distilled from a high-value interaction."""

    pattern_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1)
    prerequisites: list[str] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    example: str | None = None
    source_query: str | None = None
    source_event_ids: list[str] = Field(default_factory=list)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    usage_count: int = Field(default=0, ge=0)
    success_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    extractor: Literal["llm", "heuristic"] = "heuristic"
    extractor_model: str | None = None
    prompt_version: str | None = None
    latency_ms: float | None = Field(default=None, ge=0)


class LearnedPattern(Model):
    """What `patterns.learned` carries: the pattern and whether it was new or merged."""

    pattern: Pattern
    status: Literal["new", "merged"]
    event_id: str = Field(description="The candidate event that produced or reinforced it.")
    base_model: str | None = None
    learned_at: datetime = Field(default_factory=utcnow)


class ChatMessage(BaseModel):
    """One OpenAI chat-format message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class DatasetMetadata(BaseModel):
    """Where a dataset example came from."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = 1
    pattern_id: str
    event_id: str
    value_score: float | None = Field(default=None, ge=0.0, le=1.0)
    source: str
    tags: list[str] = Field(default_factory=list)
    timestamp: UtcDatetime


class DatasetExample(BaseModel):
    """One line of the JSONL fine-tuning dataset (OpenAI chat format)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=2)
    metadata: DatasetMetadata
