"""Merge decision at the similarity boundary, merging, ranking."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from extractors.patterns import (
    MAX_SOURCE_EVENT_IDS,
    bounded_ids,
    merge_patterns,
    rank_score,
    should_merge,
)
from schemas.pattern import Pattern
from tests.unit.test_extract_support import T0


def unit_pair(cosine: float, dim: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 unit vectors whose cosine is ``cosine``."""
    a = np.zeros(dim, dtype=np.float64)
    b = np.zeros(dim, dtype=np.float64)
    a[0] = 1.0
    b[0], b[1] = cosine, math.sqrt(1 - cosine**2)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize(("cosine", "merged"), [(0.9499, False), (0.95, True), (0.97, True)])
def test_merge_decision_at_the_threshold(cosine: float, merged: bool) -> None:
    a, b = unit_pair(cosine)
    similarity = float(np.dot(a, b))  # float32 arithmetic, as Qdrant scores
    assert should_merge(similarity, 0.95) is merged


def test_merge_decision_without_a_neighbour() -> None:
    assert should_merge(None, 0.95) is False


def pattern(pid: str, **kw: object) -> Pattern:
    base: dict[str, object] = {
        "pattern_id": pid,
        "name": f"Pattern {pid}",
        "description": "Does a thing.",
        "created_at": T0,
        "updated_at": T0,
    }
    return Pattern.model_validate(base | kw)


def test_merge_accumulates_and_keeps_the_better_example() -> None:
    existing = pattern(
        "a",
        tags=["aidb", "nixos"],
        prerequisites=["tool: x"],
        source_event_ids=["e1"],
        example="```nix\nshort\n```",
        usage_count=3,
        success_rate=1.0,
        confidence=0.6,
    )
    new = pattern(
        "b",
        name="Other name",
        tags=["nixos", "systemd"],
        prerequisites=["tool: y"],
        source_event_ids=["e2"],
        example="```nix\na much longer example\n```",
        usage_count=1,
        success_rate=0.0,
        confidence=0.4,
        created_at=T0 - timedelta(hours=1),
        updated_at=T0 + timedelta(hours=1),
    )
    m = merge_patterns(existing, new)
    assert m.pattern_id == "a" and m.name == "Pattern a"
    assert m.tags == ["aidb", "nixos", "systemd"]
    assert m.prerequisites == ["tool: x", "tool: y"]
    assert m.source_event_ids == ["e1", "e2"]
    assert m.example == new.example
    assert m.usage_count == 4
    assert m.success_rate == 0.75
    assert m.confidence == 0.6
    assert m.created_at == T0 - timedelta(hours=1)
    assert m.updated_at == T0 + timedelta(hours=1)
    # an empty example never replaces a real one
    assert merge_patterns(existing, pattern("c", example=None)).example == existing.example


def test_source_event_ids_are_bounded_keeping_the_origin() -> None:
    ids = [f"e{i}" for i in range(MAX_SOURCE_EVENT_IDS + 10)]
    kept = bounded_ids(ids)
    assert len(kept) == MAX_SOURCE_EVENT_IDS
    assert kept[0] == "e0" and kept[-1] == ids[-1]


def test_rank_prefers_proven_patterns() -> None:
    fresh = pattern("a", confidence=0.5)
    used = pattern("b", confidence=0.5, usage_count=6)
    failing = pattern("c", confidence=0.5, usage_count=6, success_rate=0.2)
    assert rank_score(used) > rank_score(fresh) > rank_score(failing)
