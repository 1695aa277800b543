"""Pure helpers on `Pattern`: deterministic ids, the text that is embedded, merging, ranking."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from typing import Literal

from schemas.pattern import Pattern

PATTERN_NS = uuid.UUID("5d7c1f0a-6a43-4f2e-9a0b-3c8e2d4f9b17")
# Qdrant scores are float32: a cosine meant to be exactly the threshold may come back a few ulps
# below it, so the comparison allows this much.
MERGE_EPSILON = 1e-6
MAX_TAGS = 16
MAX_PREREQUISITES = 16
MAX_STEPS = 12
MAX_EXAMPLE_CHARS = 6000
MAX_SOURCE_EVENT_IDS = 128

_WS = re.compile(r"\s+")
_TAG_BAD = re.compile(r"[^a-z0-9+#._-]+")

PatternStatus = Literal["new", "merged", "duplicate"]


def normalize_key(text: str) -> str:
    """Lower-cased, whitespace-collapsed, trailing punctuation dropped: the identity of a text."""
    return _WS.sub(" ", text).strip().lower().rstrip(" ?.!:;")


MAX_SOURCE_QUERY = 2000


def source_query(query: str | None) -> str | None:
    """The query as a pattern keeps it: whitespace collapsed, at most `MAX_SOURCE_QUERY` chars."""
    text = " ".join((query or "").split())
    return text[:MAX_SOURCE_QUERY] or None


def pattern_id_for(source_query: str | None, name: str) -> str:
    """The deterministic pattern id: uuid5 of the normalized source query (else the name).

    Deriving it from the query, not from LLM output, keeps it stable when the same candidate is
    extracted again (a replay, or the LLM answering differently).
    """
    basis = normalize_key(source_query or "") or normalize_key(name)
    return str(uuid.uuid5(PATTERN_NS, f"pattern:{basis}"))


def pattern_text(pattern: Pattern) -> str:
    """What a pattern's vector embeds: its name and description."""
    return f"{pattern.name.strip()}. {pattern.description.strip()}"


def should_merge(similarity: float | None, threshold: float) -> bool:
    """True when a cosine similarity reaches the merge threshold (within float32 rounding)."""
    return similarity is not None and similarity >= threshold - MERGE_EPSILON


def clean_tags(tags: Iterable[str], limit: int = MAX_TAGS) -> list[str]:
    """Lower-case, hyphenated, de-duplicated tags in first-seen order, at most ``limit``."""
    out: list[str] = []
    for tag in tags:
        t = _TAG_BAD.sub("-", tag.strip().lower()).strip("-.")
        if t and t not in out:
            out.append(t[:40])
        if len(out) >= limit:
            break
    return out


def union(a: Iterable[str], b: Iterable[str], limit: int | None = None) -> list[str]:
    """Items of ``a`` then new items of ``b``, first-seen order, at most ``limit``."""
    out: list[str] = []
    seen: set[str] = set()
    for item in (*a, *b):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out if limit is None else out[:limit]


def bounded_ids(ids: list[str], limit: int = MAX_SOURCE_EVENT_IDS) -> list[str]:
    """At most ``limit`` ids: the first (the origin) and the most recent ones."""
    if len(ids) <= limit:
        return ids
    return [ids[0], *ids[len(ids) - limit + 1 :]]


def _example_quality(example: str | None) -> int:
    return len(example.strip()) if example else 0


def better_example(a: str | None, b: str | None) -> str | None:
    """The better of two examples: a non-empty one over none, else the longer (``a`` on ties)."""
    return b if _example_quality(b) > _example_quality(a) else a


def merge_patterns(existing: Pattern, new: Pattern) -> Pattern:
    """``new`` folded into ``existing``: ids, tags, prerequisites and counts accumulate.

    The existing pattern keeps its id, name, description and extractor; it gains the new source
    event ids, tags and prerequisites, the better example, steps if it had none, the summed usage
    count (success rate weighted by usage), the higher confidence, the earlier creation time and
    the later update time.
    """
    usage = existing.usage_count + new.usage_count
    if usage:
        rate = (
            existing.success_rate * existing.usage_count + new.success_rate * new.usage_count
        ) / usage
    else:
        rate = existing.success_rate
    return existing.model_copy(
        update={
            "prerequisites": union(existing.prerequisites, new.prerequisites, MAX_PREREQUISITES),
            "steps": existing.steps or new.steps,
            "tags": union(existing.tags, new.tags, MAX_TAGS),
            "example": better_example(existing.example, new.example),
            "source_query": existing.source_query or new.source_query,
            "source_event_ids": bounded_ids(union(existing.source_event_ids, new.source_event_ids)),
            "created_at": min(existing.created_at, new.created_at),
            "updated_at": max(existing.updated_at, new.updated_at),
            "usage_count": usage,
            "success_rate": round(min(1.0, max(0.0, rate)), 6),
            "confidence": max(existing.confidence, new.confidence),
        }
    )


def rank_score(pattern: Pattern) -> float:
    """How much a pattern has proven itself: confidence x success rate x log2(2 + evidence).

    Evidence is its usage count plus the extra source events merged into it.
    """
    evidence = pattern.usage_count + max(0, len(pattern.source_event_ids) - 1)
    return pattern.confidence * pattern.success_rate * math.log2(2 + evidence)
