"""The in-memory interaction history answers what Qdrant local mode answers, and persists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from qdrant_client import QdrantClient

from extractors.store import PatternStore
from schemas.pattern import Pattern
from scorers.score import REUSABILITY_MIN_COSINE, REUSABILITY_TOP_K
from scorers.vectors import (
    INTERACTIONS,
    HistoryIndex,
    HistoryPoint,
    VectorLookups,
    ensure_collections,
    interaction_point_id,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DIM = 16


def clustered_points(n: int, seed: int) -> list[HistoryPoint]:
    """Points around a few centres, so many pairs are above the 0.85 threshold and many not."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, DIM))
    points = []
    for i in range(n):
        vec = centres[i % 5] + rng.normal(scale=0.25, size=DIM)
        vec = (vec / np.linalg.norm(vec)).astype(np.float32)
        at = T0 + timedelta(seconds=int(rng.integers(0, 3600)))
        points.append(HistoryPoint(f"e{seed}-{i}", at, vec, "aidb", f"q{i}"))
    return points


def local_client(path: Path) -> QdrantClient:
    client = QdrantClient(path=str(path))
    ensure_collections(client, DIM)
    return client


def test_index_answers_exactly_what_qdrant_answers(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    stored = clustered_points(300, seed=1)
    VectorLookups(client, history_index=False).remember(stored)
    # Queries: new points, and stored ones (which must never find themselves).
    queries = clustered_points(40, seed=2) + stored[:40]

    by_qdrant = VectorLookups(client, history_index=False)._history_hits(queries)
    with_index = VectorLookups(client, history_index=True)
    by_index = with_index._history_hits(queries)

    assert with_index.history is not None and len(with_index.history) == 300
    assert by_index == by_qdrant
    assert sum(len(h) for h in by_qdrant) > 100  # the comparison is not vacuous
    assert any(len(h) == REUSABILITY_TOP_K for h in by_qdrant)  # the limit is exercised
    for q, hits in zip(queries, by_index, strict=True):
        assert interaction_point_id(q.event_id) not in hits


def test_search_keeps_the_best_hits_in_order() -> None:
    index = HistoryIndex()
    base = np.eye(4, dtype=np.float32)[0]
    vecs = [base + np.float32(0.05 * k) * np.eye(4, dtype=np.float32)[1] for k in range(15)]
    index.add([f"p{k}" for k in range(15)], vecs, [float(k) for k in range(15)])
    [hits] = index.search([base], [100.0], ["p0"], REUSABILITY_MIN_COSINE, 10)
    assert [pid for pid, _ in hits] == [f"p{k}" for k in range(1, 11)]
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    [early] = index.search([base], [3.0], ["none"], REUSABILITY_MIN_COSINE, 10)
    assert [pid for pid, _ in early] == ["p0", "p1", "p2"]  # ts strictly before 3.0


def test_remember_updates_the_index_and_a_restart_reloads_it(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    lookups = VectorLookups(client)  # local mode: the index is on by default
    first, later = clustered_points(50, seed=3), clustered_points(20, seed=4)
    assert lookups.history is not None and len(lookups.history) == 0
    lookups.remember(first)
    lookups.remember(first[:10])  # upserts are idempotent by event id
    assert len(lookups.history) == 50
    before = lookups.lookup(later)
    client.close()

    reopened = VectorLookups(local_client(tmp_path / "q"))
    assert reopened.history is not None and len(reopened.history) == 50
    assert reopened.lookup(later) == before
    assert sum(x.similar_earlier for x in before) > 0


def test_history_collection_runs_in_wal_mode(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    conn = client._client.collections[INTERACTIONS].storage.storage
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_index_rejects_a_mismatched_batch() -> None:
    with pytest.raises(ValueError):
        HistoryIndex().add(["a", "b"], [np.ones(4, dtype=np.float32)], [1.0, 2.0])


def test_pattern_index_follows_the_store_and_answers_like_qdrant(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    lookups = VectorLookups(client)
    assert lookups.patterns is not None
    # Vectors are given, so the store never needs the embedding model.
    store = PatternStore(client, cast(Any, None), index=lookups.patterns)
    stored = clustered_points(40, seed=5)
    for n, p in enumerate(stored):
        pattern = Pattern(
            pattern_id=f"p{n}",
            name=f"pattern {n}",
            description="d",
            source_event_ids=[p.event_id],
            created_at=p.timestamp,
        )
        store.upsert(pattern, p.vector)
    # A near-duplicate learned from an earlier event merges and moves created_at back.
    first = stored[0]
    earlier = Pattern(
        pattern_id="dup",
        name="dup",
        description="d",
        source_event_ids=["early"],
        created_at=T0 - timedelta(days=1),
    )
    assert store.upsert(earlier, first.vector).status == "merged"

    probe = HistoryPoint("probe", T0 - timedelta(hours=1), first.vector, "aidb", "q")
    queries = [*clustered_points(30, seed=6), probe]
    by_qdrant = VectorLookups(client, history_index=False)._pattern_similarity(queries)
    by_index = lookups._pattern_similarity(queries)
    assert [s is None for s in by_index] == [s is None for s in by_qdrant]
    assert [s or 0.0 for s in by_index] == pytest.approx([s or 0.0 for s in by_qdrant], abs=1e-5)
    assert by_index[-1] == pytest.approx(1.0, abs=1e-5)  # found only thanks to the merge
    assert 0 < sum(s is not None for s in by_index) < len(queries)


def test_live_and_reloaded_points_are_the_same_floats(tmp_path: Path) -> None:
    """A replay after a restart compares against exactly the vectors a live run used.

    Bit-identical by construction: the live index takes each point's vector back from Qdrant
    after the write (`HistoryIndex.add_stored`), and a reload takes the same stored vectors, so
    no second normalization (whose rounding depends on the CPU's kernels) is involved.
    """
    client = local_client(tmp_path / "q")
    live = VectorLookups(client)
    assert live.history is not None  # loaded before any write, as in the worker
    rng = np.random.default_rng(7)
    points = [
        HistoryPoint(
            f"r{i}", T0 + timedelta(seconds=i), rng.normal(size=DIM).astype(np.float32), "aidb", "q"
        )
        for i in range(30)
    ]
    live.remember(points)
    queries = rng.normal(size=(5, DIM)).astype(np.float32)
    args = ([T0 + timedelta(days=1)] * 5, [""] * 5, -1.0, 30)
    before = live.history.search(queries, [t.timestamp() for t in args[0]], *args[1:])  # type: ignore[union-attr]
    client.close()
    reloaded = VectorLookups(local_client(tmp_path / "q")).history
    assert reloaded is not None
    after = reloaded.search(queries, [t.timestamp() for t in args[0]], *args[1:])
    assert after == before  # same ids, same order, bit-identical scores
    assert len(before[0]) > 0


def test_points_without_a_time_are_never_earlier(tmp_path: Path) -> None:
    from qdrant_client import models

    client = local_client(tmp_path / "q")
    vec = np.eye(DIM, dtype=np.float32)[0]
    client.upsert(
        INTERACTIONS,
        [models.PointStruct(id=interaction_point_id("no-ts"), vector=vec.tolist(), payload={})],
    )
    probe = [HistoryPoint("probe", T0, vec, "aidb", "q")]
    assert VectorLookups(client, history_index=False)._history_hits(probe) == [set()]
    assert VectorLookups(client)._history_hits(probe) == [set()]
