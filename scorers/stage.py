"""The scoring stage as one blocking function over a batch of raw telemetry records.

raw bytes → validate (invalid → dead letter) → normalize → embed the queries in one batch →
look up reusability/novelty → score → remember the queries. No Kafka here: the Faust agent
moves records in and out, and runs this in a worker thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from learnstream.metrics import StreamMetrics
from learnstream.settings import Settings
from schemas.base import SourceEvent
from schemas.dlq import DeadLetter
from schemas.errors import EventError
from schemas.interaction import Interaction, ScoredInteraction
from schemas.parsing import parse_event
from scorers.embeddings import Embedder
from scorers.normalize import normalize
from scorers.score import Lookups, score_interaction
from scorers.vectors import HistoryPoint, VectorLookups

TELEMETRY_PREFIX = "telemetry."
_RECORD_NS = uuid.UUID("8a3e5f0e-3c1b-4d7a-9b54-7f1e2d6c0a93")


@dataclass(frozen=True)
class RawRecord:
    """A record as read from a telemetry topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class BatchResult:
    """What one batch produced, in input order."""

    scored: list[ScoredInteraction] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def record_event_id(record: RawRecord) -> str:
    """A stable id for an event that arrived without one (a foreign producer)."""
    return str(uuid.uuid5(_RECORD_NS, f"{record.topic}:{record.partition}:{record.offset}"))


class ScoringStage:
    """Scores batches of telemetry records; holds the model and the vector client."""

    def __init__(
        self, settings: Settings, embedder: Embedder, vectors: VectorLookups, metrics: StreamMetrics
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.vectors = vectors
        self.metrics = metrics
        # Held around every use of the Qdrant client; shared with the other stages of the
        # process (Qdrant local mode is not safe for concurrent use from several threads).
        self.vector_lock = threading.Lock()

    def _timed(self, step: str, started: float) -> float:
        now = time.perf_counter()
        self.metrics.stage_seconds.labels("score", step).observe(now - started)
        return now

    def parse(self, records: Sequence[RawRecord]) -> tuple[list[Interaction], list[DeadLetter]]:
        """Validate and normalize; what fails becomes a dead letter with the reason."""
        interactions: list[Interaction] = []
        dead: list[DeadLetter] = []
        for rec in records:
            source = rec.topic.removeprefix(TELEMETRY_PREFIX)
            try:
                event: SourceEvent = parse_event(
                    source, rec.value, max_bytes=self.settings.max_event_bytes
                )
                if event.event_id is None:
                    event = event.model_copy(update={"event_id": record_event_id(rec)})
                interaction = normalize(event)
            except EventError as exc:
                self.metrics.events_invalid.labels(source, exc.kind).inc()
                dead.append(
                    DeadLetter.from_bytes(
                        rec.value,
                        key=rec.key,
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        source=source,
                        event_type=exc.event_type,
                        stage="score",
                        error=exc.reason,
                        error_kind=exc.kind,
                    )
                )
                continue
            except ValueError as exc:  # the normalizer refused a valid event
                self.metrics.events_invalid.labels(source, "normalize").inc()
                dead.append(
                    DeadLetter.from_bytes(
                        rec.value,
                        key=rec.key,
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        source=source,
                        stage="score",
                        error=f"cannot normalize: {exc}",
                        error_kind="normalize",
                    )
                )
                continue
            self.metrics.events_consumed.labels(source, interaction.event_type).inc()
            interactions.append(interaction)
        return interactions, dead

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Score a batch; every valid record yields exactly one `ScoredInteraction`."""
        t = time.perf_counter()
        interactions, dead = self.parse(records)
        t = self._timed("parse", t)
        # One embedding per scorable interaction with a query; it serves both look-ups.
        todo = [i for i in interactions if i.scorable and i.query and i.query.strip()]
        vectors: Any = self.embedder.encode([i.query or "" for i in todo]) if todo else []
        t = self._timed("embed", t)
        points = [
            HistoryPoint(i.event_id, i.timestamp, vec, i.source.value, i.query or "")
            for i, vec in zip(todo, vectors, strict=True)
        ]
        with self.vector_lock:
            looked_up = self.vectors.lookup(points)
        found = dict(zip((p.event_id for p in points), looked_up, strict=True))
        t = self._timed("lookup", t)
        weights, threshold = self.settings.score.weights, self.settings.score.threshold
        result = BatchResult(dead=dead)
        for interaction in interactions:
            lookups = found.get(
                interaction.event_id,
                Lookups(similar_earlier=0, max_pattern_similarity=None, embedded=False),
            )
            scored = score_interaction(interaction, lookups, weights=weights, threshold=threshold)
            result.scored.append(scored)
            if scored.score is not None and scored.factors is not None:
                src = interaction.source.value
                self.metrics.value_score.labels(src).observe(scored.score)
                for name, value in scored.factors.model_dump(exclude={"schema_version"}).items():
                    self.metrics.factor.labels(name).observe(value)
                if scored.high_value:
                    self.metrics.high_value.labels(src).inc()
        t = self._timed("score", t)
        with self.vector_lock:
            self.vectors.remember(points)
        self._timed("remember", t)
        return result
