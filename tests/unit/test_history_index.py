"""The in-memory interaction history answers what Qdrant answers, and persists; visibility,
high-value novelty, in-batch order and rounding of the look-ups."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from qdrant_client import QdrantClient

from extractors.store import PatternStore
from schemas.pattern import Pattern
from scorers.score import REUSABILITY_MIN_COSINE, REUSABILITY_TOP_K, Lookups
from scorers.vectors import (
    INTERACTIONS,
    HistoryIndex,
    HistoryPoint,
    VectorLookups,
    ensure_collections,
    interaction_point_id,
    similarity_units,
    threshold_units,
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
    # Ties in the rounded cosine may pick other ids for a full top 10 (Qdrant returns its own
    # top by unrounded score); the count, which is all reusability uses, is the same.
    assert [len(h) for h in by_index] == [len(h) for h in by_qdrant]
    assert [h for h in by_index if len(h) < REUSABILITY_TOP_K] == [
        h for h in by_qdrant if len(h) < REUSABILITY_TOP_K
    ]
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


def test_novelty_reads_high_value_history_not_patterns(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    lookups = VectorLookups(client)
    assert lookups.patterns is None  # no in-memory pattern copy to keep current any more
    vec = np.eye(DIM, dtype=np.float32)[0]
    # A stored pattern identical to the query changes nothing: novelty does not read them.
    store = PatternStore(client, cast(Any, None), index=lookups.patterns)
    pattern = Pattern(
        pattern_id="p", name="p", description="d", source_event_ids=["x"], created_at=T0
    )
    store.upsert(pattern, vec)
    probe = [HistoryPoint("probe", T0 + timedelta(hours=1), vec, "aidb", "q")]
    assert lookups.lookup(probe)[0].max_known_similarity is None
    # An earlier interaction that was not high value does not make it known either ...
    lookups.remember([HistoryPoint("low", T0, vec, "aidb", "q", high_value=False)])
    [found] = lookups.lookup(probe)
    assert (found.similar_earlier, found.max_known_similarity) == (1, None)
    # ... an earlier high-value one does.
    lookups.remember([HistoryPoint("high", T0, vec, "aidb", "q", high_value=True)])
    assert lookups.lookup(probe)[0].max_known_similarity == 1.0


def test_index_and_qdrant_agree_on_visibility_and_high_value(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    rng = np.random.default_rng(11)
    stored = [
        dataclasses.replace(
            p, arrival=float(rng.uniform(0, 100)), high_value=bool(rng.random() < 0.4)
        )
        for p in clustered_points(300, seed=12)
    ]
    VectorLookups(client, history_index=False).remember(stored)
    queries = [
        dataclasses.replace(p, arrival=float(rng.uniform(0, 100)))
        for p in clustered_points(40, seed=13) + stored[:20]
    ]
    bounds = [(q.arrival or 0.0) + 1.0 for q in queries]
    by_qdrant = VectorLookups(client, history_index=False)._history(queries, bounds)
    by_index = VectorLookups(client, history_index=True)._history(queries, bounds)
    assert by_index[1] == by_qdrant[1]  # the best high-value cosine, rounded, exactly
    assert [len(h) for h in by_index[0]] == [len(h) for h in by_qdrant[0]]
    similar, known = by_index
    assert sum(len(h) for h in similar) > 50
    assert 0 < sum(k is not None for k in known) < len(queries)
    # Without the arrival bound more is visible.
    unbounded = VectorLookups(client)._history(queries, [float("inf")] * len(queries))
    assert sum(map(len, unbounded[0])) > sum(map(len, similar))


def test_only_points_that_arrived_within_the_horizon_are_visible(tmp_path: Path) -> None:
    from qdrant_client import models

    client = local_client(tmp_path / "q")
    vec = np.eye(DIM, dtype=np.float32)[0]
    VectorLookups(client).remember(
        [
            HistoryPoint("in-time", T0, vec, "aidb", "q", arrival=100.0, high_value=True),
            HistoryPoint("too-late", T0, vec, "aidb", "q", arrival=101.5, high_value=True),
        ]
    )
    # A point written by scorer 1.x has no arrival: it counts as arrived at the start.
    client.upsert(
        INTERACTIONS,
        [
            models.PointStruct(
                id=interaction_point_id("old"), vector=vec.tolist(), payload={"ts": 0.0}
            )
        ],
    )
    probe = [HistoryPoint("probe", T0 + timedelta(seconds=5), vec, "aidb", "q", arrival=100.2)]
    for use_index in (True, False):
        lookups = VectorLookups(client, history_index=use_index)
        [within] = lookups.lookup(probe, horizon_s=1.0)
        [anything] = lookups.lookup(probe)
        assert (within.similar_earlier, anything.similar_earlier) == (2, 3)
        assert within.max_known_similarity == anything.max_known_similarity == 1.0
        assert within.horizon_s == 1.0 and anything.horizon_s is None


def test_a_batch_sees_its_earlier_high_value_points_in_event_time_order(tmp_path: Path) -> None:
    client = local_client(tmp_path / "q")
    vec = np.eye(DIM, dtype=np.float32)[0]
    # Given newest first; scored oldest first; the oldest two are decided high value.
    batch = [
        HistoryPoint(f"b{i}", T0 + timedelta(seconds=i), vec, "aidb", "q") for i in (3, 2, 1, 0)
    ]
    decided: list[str] = []

    def decide(n: int, lookups: Lookups) -> bool:
        decided.append(batch[n].event_id)
        return batch[n].event_id in ("b0", "b1")

    out = VectorLookups(client).lookup(batch, decide=decide)
    assert decided == ["b0", "b1", "b2", "b3"]
    assert [x.similar_earlier for x in out] == [3, 2, 1, 0]
    assert [x.max_known_similarity for x in out] == [1.0, 1.0, 1.0, None]


def test_one_batch_or_one_at_a_time_gives_the_same_lookups(tmp_path: Path) -> None:
    """Rounded cosines are computed alike within a batch and against the history."""
    points = [
        dataclasses.replace(p, arrival=float(i) * 0.01)
        for i, p in enumerate(clustered_points(80, seed=21))
    ]
    points.sort(key=lambda p: (p.timestamp, p.event_id))

    def decide(n: int, lookups: Lookups) -> bool:
        return lookups.similar_earlier % 2 == 0

    together = VectorLookups(local_client(tmp_path / "a")).lookup(
        points, horizon_s=0.2, decide=decide
    )
    single = VectorLookups(local_client(tmp_path / "b"))
    alone = []
    for p in points:
        [found] = single.lookup([p], horizon_s=0.2)
        alone.append(found)
        single.remember([dataclasses.replace(p, high_value=decide(0, found))])
    assert alone == together
    assert any(x.max_known_similarity is not None for x in together)


def test_similarities_are_rounded_to_four_decimals() -> None:
    index = HistoryIndex()
    base = np.eye(4, dtype=np.float32)[0]
    near = np.array([0.85, np.sqrt(1 - 0.85**2) + 1e-9, 0, 0], dtype=np.float32)
    index.add(["a"], [near], [0.0])
    [hits] = index.search([base], [1.0], [""], REUSABILITY_MIN_COSINE, 10)
    assert hits == [("a", 0.85)]
    assert similarity_units([0.849951, 0.84994, 0.90005]).tolist() == [8500, 8499, 9000]
    assert threshold_units(REUSABILITY_MIN_COSINE) == 8500


def test_live_and_reloaded_points_are_the_same_floats(tmp_path: Path) -> None:
    """A replay after a restart compares against exactly the vectors a live run used.

    Bit-identical by construction: both store the idempotent `unit_float32` form of each
    vector, and cosines are float64 sums of its products rounded to float32 and then to 4
    decimals.
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
