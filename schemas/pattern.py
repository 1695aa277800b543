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


RefusalReason = Literal[
    "empty",
    "echo",
    "repetition",
    "refusal",
    "apology",
    "acknowledgement",
    "too_short",
    "llm_no_pattern",
    "near_duplicate",
    "pattern_cap",
]
"""Why a candidate made no pattern (the substance gate) or no dataset example (the balance).

Gate reasons (no pattern, no example): ``empty`` (no response), ``echo`` (the response repeats
the question), ``repetition`` (a sentence repeated), ``refusal`` ("I can't help with that"),
``apology``, ``acknowledgement`` (generic filler: "I can help with that."), ``too_short`` (too
few informative words to teach anything), ``llm_no_pattern`` (the LLM extractor answered "no
pattern"). Balance reasons (the pattern is kept, the example is not written):
``near_duplicate`` (a near-identical answer to the same question in other words is in the
dataset often enough), ``pattern_cap`` (the pattern has its maximum number of examples).
"""


class Refusal(Model):
    """A candidate the substance gate refused, or an example the dataset balance skipped.

    One line of the refusals JSONL next to the dataset, kept for review (excerpts are of the
    redacted candidate, like the dataset).
    """

    kind: Literal["pattern", "example"] = Field(
        description="pattern: refused by the gate (no pattern, no example); example: the "
        "pattern was learned but its dataset example was skipped by the balance."
    )
    reason: RefusalReason
    detail: str = Field(default="", description="The measurement or rule that decided it.")
    decided_by: Literal["rules", "llm", "balance"] = "rules"
    event_id: str = Field(min_length=1)
    source: str
    event_type: str
    value_score: float | None = Field(default=None, ge=0.0, le=1.0)
    pattern_id: str | None = Field(default=None, description="For an example skip: its pattern.")
    query_excerpt: str = ""
    response_excerpt: str = ""
    measures: dict[str, float] = Field(default_factory=dict)
    timestamp: UtcDatetime = Field(description="The event's time.")
    refused_at: UtcDatetime = Field(default_factory=utcnow)
