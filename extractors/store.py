"""The pattern store: Qdrant collection ``skills-patterns`` (cosine over name + description).

Point ids are uuid5 of the pattern id, so writes are upserts. Payload per point::

    pattern_id, name, extractor, tags, rank
    created_ts, updated_ts      epoch seconds (float); created_ts feeds the novelty look-up
    source_event_ids            candidate events folded into the pattern (idempotency), bounded
    feedback_applied            16-hex markers of events whose feedback was applied
                                (idempotency; the last `MAX_FEEDBACK_IDS`)
    pattern                     the `Pattern` as JSON, less source_event_ids (stored once, above)

`PatternStore.upsert` adds a pattern, merges it into an existing one (same pattern id, or
cosine >= the merge threshold), or recognizes a candidate event it has already folded in and
changes nothing. Read-modify-write steps are serialized by a lock within the process; run one
extraction worker per pattern store (or accept rare lost updates between workers).
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from extractors.feedback import FeedbackSignal, apply_feedback, confidence_delta, effect_of
from extractors.metrics import ExtractMetrics
from extractors.patterns import (
    PatternStatus,
    merge_patterns,
    pattern_text,
    rank_score,
    should_merge,
)
from schemas.pattern import Pattern
from scorers.vectors import NAMESPACE, PATTERNS, HistoryIndex, ensure_collections, unit_float32

if TYPE_CHECKING:
    import numpy as np
    from qdrant_client import QdrantClient

    from scorers.embeddings import Embedder

MAX_FEEDBACK_IDS = 256
_SCROLL_PAGE = 256


def pattern_point_id(pattern_id: str) -> str:
    """Deterministic Qdrant point id of a pattern."""
    return str(uuid.uuid5(NAMESPACE, f"pattern:{pattern_id}"))


@dataclass(frozen=True)
class UpsertResult:
    """What `PatternStore.upsert` did.

    ``status``: ``new`` (added), ``merged`` (folded into ``pattern``, an existing one; then
    ``similarity`` is the cosine that decided it, or None for the same pattern id) or
    ``duplicate`` (a source event of the pattern was already stored: nothing changed and
    ``pattern`` is the stored one).
    """

    pattern: Pattern
    status: PatternStatus
    similarity: float | None = None


@dataclass(frozen=True)
class ScoredPattern:
    """A search hit."""

    pattern: Pattern
    score: float


FeedbackEffect = Literal["up", "down", "neutral", "duplicate", "unknown"]


@dataclass(frozen=True)
class FeedbackResult:
    """The effect of one feedback signal; ``pattern`` is None for an unknown pattern id."""

    pattern_id: str
    event_id: str
    effect: FeedbackEffect
    pattern: Pattern | None = None


def feedback_marker(event_id: str) -> str:
    """The compact idempotency marker of a feedback event (64-bit blake2b, hex)."""
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).hexdigest()


def pattern_payload(pattern: Pattern, feedback_applied: Sequence[str] = ()) -> dict[str, Any]:
    """The Qdrant payload of a pattern."""
    return {
        "pattern_id": pattern.pattern_id,
        "name": pattern.name,
        "extractor": pattern.extractor,
        "tags": list(pattern.tags),
        "rank": round(rank_score(pattern), 6),
        "created_ts": pattern.created_at.timestamp(),
        "updated_ts": pattern.updated_at.timestamp(),
        "source_event_ids": list(pattern.source_event_ids),
        "feedback_applied": list(feedback_applied),
        # the pattern without its source ids (kept once, above, for filtering)
        "pattern": pattern.model_dump(mode="json", exclude={"source_event_ids"}),
    }


def _pattern_of(payload: dict[str, Any] | None) -> Pattern:
    if not payload or "pattern" not in payload:
        raise ValueError("a skills-patterns point without a pattern payload")
    data = dict(payload["pattern"])
    data.setdefault("source_event_ids", payload.get("source_event_ids", []))
    return Pattern.model_validate(data)


class PatternStore:
    """Skill patterns in Qdrant: add/merge, idempotent per event, search, top, feedback."""

    def __init__(
        self,
        client: QdrantClient,
        embedder: Embedder,
        *,
        merge_threshold: float = 0.95,
        collection: str = PATTERNS,
        metrics: ExtractMetrics | None = None,
        index: HistoryIndex | None = None,
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.merge_threshold = merge_threshold
        self.collection = collection
        self.metrics = metrics
        self.index = index  # the scoring stage's in-memory copy (Qdrant local mode), kept current
        self._lock = threading.RLock()

    def ensure(self) -> None:
        """Create the collections if missing."""
        if self.collection == PATTERNS:
            ensure_collections(self.client, self.embedder.dimensions)
        elif not self.client.collection_exists(self.collection):
            from qdrant_client import models

            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=self.embedder.dimensions, distance=models.Distance.COSINE
                ),
            )

    # reads

    def _record(self, pattern_id: str) -> tuple[Pattern, dict[str, Any]] | None:
        found = self.client.retrieve(
            self.collection, ids=[pattern_point_id(pattern_id)], with_payload=True
        )
        if not found:
            return None
        payload = dict(found[0].payload or {})
        return _pattern_of(payload), payload

    def get(self, pattern_id: str) -> Pattern | None:
        """The stored pattern with this id, or None."""
        record = self._record(pattern_id)
        return record[0] if record else None

    def find_by_events(self, event_ids: Sequence[str]) -> dict[str, Pattern]:
        """For each event id already folded into a stored pattern, that pattern."""
        from qdrant_client import models

        wanted = list(dict.fromkeys(e for e in event_ids if e))
        if not wanted:
            return {}
        points, _ = self.client.scroll(
            self.collection,
            scroll_filter=models.Filter(
                must=[
                    models.FieldCondition(key="source_event_ids", match=models.MatchAny(any=wanted))
                ]
            ),
            limit=len(wanted),
            with_payload=True,
            with_vectors=False,
        )
        out: dict[str, Pattern] = {}
        for point in points:
            pattern = _pattern_of(point.payload)
            ids = set((point.payload or {}).get("source_event_ids", []))
            for event_id in wanted:
                if event_id in ids:
                    out.setdefault(event_id, pattern)
        return out

    def nearest(self, vector: np.ndarray, limit: int = 1) -> list[ScoredPattern]:
        """The patterns nearest to a vector (cosine), best first."""
        hits = self.client.query_points(
            self.collection, query=vector.tolist(), limit=limit, with_payload=True
        ).points
        return [ScoredPattern(_pattern_of(h.payload), float(h.score)) for h in hits]

    def search(
        self, text: str, limit: int = 5, min_score: float | None = None
    ) -> list[ScoredPattern]:
        """Patterns similar to a text (a query, or a name and description), best first."""
        vector = self.embedder.encode([text])[0]
        hits = self.nearest(vector, limit)
        return [h for h in hits if min_score is None or h.score >= min_score]

    def _scroll_all(self) -> list[tuple[Pattern, dict[str, Any]]]:
        out: list[tuple[Pattern, dict[str, Any]]] = []
        offset: Any = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            out.extend((_pattern_of(p.payload), dict(p.payload or {})) for p in points)
            if offset is None:
                return out

    def top(self, limit: int = 10) -> list[Pattern]:
        """The best-proven patterns: by `rank_score` (confidence, success rate, evidence)."""
        patterns = [p for p, _ in self._scroll_all()]
        return heapq.nlargest(
            limit, patterns, key=lambda p: (rank_score(p), p.updated_at, p.pattern_id)
        )

    def count(self) -> int:
        """Stored patterns."""
        return int(self.client.count(self.collection, exact=True).count)

    # writes

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.patterns_stored.labels(status).inc()

    def upsert(self, pattern: Pattern, vector: np.ndarray | None = None) -> UpsertResult:
        """Add ``pattern``, merge it into a near-identical one, or recognize it as already stored.

        ``vector`` is the embedding of `pattern_text` (computed when not given).
        """
        with self._lock:
            stored = self.find_by_events(pattern.source_event_ids)
            if stored:
                self._count("duplicate")
                return UpsertResult(next(iter(stored.values())), "duplicate")
            if vector is None:
                vector = self.embedder.encode([pattern_text(pattern)])[0]
            similarity: float | None = None
            record = self._record(pattern.pattern_id)
            if record is None:
                hits = self.nearest(vector, limit=1)
                if hits and should_merge(hits[0].score, self.merge_threshold):
                    similarity = hits[0].score
                    record = self._record(hits[0].pattern.pattern_id)
            if record is not None:
                existing, payload = record
                merged = merge_patterns(existing, pattern)
                point_id = pattern_point_id(existing.pattern_id)
                self.client.overwrite_payload(
                    self.collection,
                    payload=pattern_payload(merged, payload.get("feedback_applied", [])),
                    points=[point_id],
                    wait=True,
                )
                if self.index is not None:
                    self.index.retime([point_id], [merged.created_at.timestamp()])
                self._count("merged")
                if self.metrics is not None:
                    self.metrics.patterns_merged.labels(pattern.extractor).inc()
                return UpsertResult(merged, "merged", similarity)
            from qdrant_client import models

            point_id = pattern_point_id(pattern.pattern_id)
            self.client.upsert(
                self.collection,
                points=[
                    models.PointStruct(
                        id=point_id,
                        vector=unit_float32(vector)[0].tolist(),
                        payload=pattern_payload(pattern),
                    )
                ],
                wait=True,
            )
            if self.index is not None:
                self.index.add([point_id], [vector], [pattern.created_at.timestamp()])
            self._count("new")
            return UpsertResult(pattern, "new")

    def apply_feedback(self, signal: FeedbackSignal) -> FeedbackResult:
        """Apply one use of a pattern (idempotent per event id); see `extractors.feedback`."""
        with self._lock:
            record = self._record(signal.pattern_id)
            if record is None:
                return self._feedback(FeedbackResult(signal.pattern_id, signal.event_id, "unknown"))
            pattern, payload = record
            applied: list[str] = list(payload.get("feedback_applied", []))
            marker = feedback_marker(signal.event_id)
            if marker in applied:
                return self._feedback(
                    FeedbackResult(signal.pattern_id, signal.event_id, "duplicate", pattern)
                )
            updated = apply_feedback(pattern, signal.outcome, signal.quality, signal.at)
            applied = [*applied, marker][-MAX_FEEDBACK_IDS:]
            self.client.overwrite_payload(
                self.collection,
                payload=pattern_payload(updated, applied),
                points=[pattern_point_id(pattern.pattern_id)],
                wait=True,
            )
            effect = effect_of(confidence_delta(signal.outcome, signal.quality))
            return self._feedback(
                FeedbackResult(signal.pattern_id, signal.event_id, effect, updated)
            )

    def _feedback(self, result: FeedbackResult) -> FeedbackResult:
        if self.metrics is not None:
            self.metrics.pattern_feedback.labels(result.effect).inc()
        return result
