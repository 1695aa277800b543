"""The scoring stage as blocking functions over batches of raw telemetry records.

raw bytes → validate (invalid → dead letter) → normalize (`parse_records`) → [the agent holds
look-up events until the watermark releases them, `scorers.watermark`] → embed the queries in
one batch → look up reusability/novelty and score, in event-time order → remember the queries
(`score`). `process` does both steps at once, without holding (tests, benchmarks). No Kafka
here: the Faust agent moves records in and out, and runs these in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import Settings
from schemas.base import SourceEvent
from schemas.dlq import DeadLetter
from schemas.errors import EventError
from schemas.interaction import Interaction, ScoredInteraction
from schemas.parsing import parse_event
from schemas.redact import redact_interaction
from scorers.embeddings import Embedder
from scorers.normalize import normalize
from scorers.score import Lookups, score_interaction
from scorers.vectors import HistoryPoint, VectorLookups

log = logging.getLogger("learnstream.score")

TELEMETRY_PREFIX = "telemetry."
_RECORD_NS = uuid.UUID("8a3e5f0e-3c1b-4d7a-9b54-7f1e2d6c0a93")


@dataclass(frozen=True)
class RawRecord:
    """A record as read from a telemetry topic; ``timestamp``: its Kafka record timestamp
    (epoch seconds; None when unknown), the arrival time of the watermark."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None


@dataclass(frozen=True)
class Parsed:
    """A valid record, normalized: ``index`` is its place in the batch given to `parse_records`."""

    index: int
    record: RawRecord
    interaction: Interaction


@dataclass(frozen=True)
class Pending:
    """An interaction to score, with what the watermark found out about it.

    ``arrival``: its record's Kafka timestamp (None: unknown). ``late``, ``forced``: see
    `scorers.score.Lookups`.
    """

    interaction: Interaction
    arrival: float | None = None
    late: bool = False
    forced: bool = False


def repeat_of(item: Pending, known: dict[str, tuple[float, bool]]) -> Pending:
    """An event the history already holds scores like its first copy: with the first
    copy's arrival (so it sees the same interactions) and late flag."""
    stored = known.get(item.interaction.event_id)
    if stored is None or (item.arrival is not None and stored[0] > item.arrival):
        return item
    return dataclasses.replace(item, arrival=stored[0], late=stored[1])


def needs_lookup(interaction: Interaction) -> bool:
    """Whether scoring the interaction involves the vector look-ups (and so the watermark)."""
    return interaction.scorable and bool(interaction.query and interaction.query.strip())


def arrival_of(record: RawRecord) -> float | None:
    """The record's arrival time, or None when it has no usable Kafka timestamp."""
    ts = record.timestamp
    return ts if ts is not None and ts > 0 else None


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
        parsed, dead = self.parse_records(records)
        return [p.interaction for p in parsed], dead

    def parse_records(self, records: Sequence[RawRecord]) -> tuple[list[Parsed], list[DeadLetter]]:
        """Validate and normalize, keeping each interaction's record; failures become dead
        letters with the reason."""
        interactions: list[Parsed] = []
        dead: list[DeadLetter] = []
        for index, rec in enumerate(records):
            source = rec.topic.removeprefix(TELEMETRY_PREFIX)
            try:
                event: SourceEvent = parse_event(
                    source,
                    rec.value,
                    max_bytes=self.settings.max_event_bytes,
                    max_depth=self.settings.max_event_depth,
                )
                if event.event_id is None:
                    event = event.model_copy(update={"event_id": record_event_id(rec)})
                interaction = normalize(event)
                if self.settings.score.redact:
                    found: Counter[str] = Counter()
                    interaction = redact_interaction(interaction, found)
                    for kind, n in found.items():
                        self.metrics.secrets_redacted.labels(source, kind).inc(n)
            except EventError as exc:
                reason, kind, event_type = exc.reason, exc.kind, exc.event_type
            except ValueError as exc:  # the normalizer refused a valid event
                reason, kind, event_type = f"cannot normalize: {exc}", "normalize", None
            except Exception as exc:  # one record never takes its batch-mates down
                log.exception("record %s/%d@%d failed", rec.topic, rec.partition, rec.offset)
                reason, kind, event_type = f"internal error: {type(exc).__name__}", "internal", None
            else:
                self.metrics.events_consumed.labels(source, interaction.event_type).inc()
                interactions.append(Parsed(index, rec, interaction))
                continue
            self.metrics.events_invalid.labels(source, kind).inc()
            dead.append(
                DeadLetter.from_bytes(
                    rec.value,
                    key=rec.key,
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    source=source,
                    event_type=event_type,
                    stage="score",
                    error=reason,
                    error_kind=kind,
                )
            )
        return interactions, dead

    @property
    def horizon_s(self) -> float:
        """The arrival horizon of the look-ups (`scorers.watermark`), in seconds."""
        return self.settings.score.watermark_horizon_ms / 1000

    def score(self, items: Sequence[Pending]) -> list[ScoredInteraction]:
        """Score interactions (in the order given); every one yields one `ScoredInteraction`.

        The look-up interactions are embedded in one batch, looked up and scored in
        (timestamp, event id) order, each seeing the earlier ones of the batch that are
        visible to it (and whether they were high value), then remembered.
        """
        t = time.perf_counter()
        # One embedding per scorable interaction with a query; it serves both look-ups.
        todo = [k for k, item in enumerate(items) if needs_lookup(item.interaction)]
        with self.vector_lock:
            known = self.vectors.stored([items[k].interaction.event_id for k in todo])
        items = [repeat_of(item, known) for item in items]
        texts = [items[k].interaction.query or "" for k in todo]
        vectors: Any = self.embedder.encode(texts) if todo else []
        t = self._timed("embed", t)
        points = [
            HistoryPoint(
                i.event_id, i.timestamp, vec, i.source.value, i.query or "", items[k].arrival
            )
            for k, vec in zip(todo, vectors, strict=True)
            for i in (items[k].interaction,)
        ]
        weights, threshold = self.settings.score.weights, self.settings.score.threshold
        scored: list[ScoredInteraction | None] = [None] * len(items)

        def decide(n: int, lookups: Lookups) -> bool:
            k = todo[n]
            item = items[k]
            lookups = dataclasses.replace(lookups, late=item.late, forced=item.forced)
            s = score_interaction(item.interaction, lookups, weights=weights, threshold=threshold)
            scored[k] = s
            return s.high_value

        with self.vector_lock:
            self.vectors.lookup(points, horizon_s=self.horizon_s, decide=decide)
        t = self._timed("lookup", t)
        for k, item in enumerate(items):
            if scored[k] is None:
                lookups = Lookups(
                    similar_earlier=0,
                    max_known_similarity=None,
                    embedded=False,
                    late=item.late,
                    forced=item.forced,
                    horizon_s=self.horizon_s,
                )
                scored[k] = score_interaction(
                    item.interaction, lookups, weights=weights, threshold=threshold
                )
        out = [s for s in scored if s is not None]
        for s, item in zip(out, items, strict=True):
            if item.late:
                self.metrics.late_events.labels(s.interaction.source.value, "late").inc()
            if s.score is not None and s.factors is not None:
                src = s.interaction.source.value
                self.metrics.value_score.labels(src).observe(s.score)
                for name, value in s.factors.model_dump(exclude={"schema_version"}).items():
                    self.metrics.factor.labels(name).observe(value)
                if s.high_value:
                    self.metrics.high_value.labels(src).inc()
        t = self._timed("score", t)
        remembered = [
            dataclasses.replace(p, high_value=s.high_value, score=s.score, late=items[k].late)
            for p, k in zip(points, todo, strict=True)
            for s in (out[k],)
        ]
        with self.vector_lock:
            self.vectors.remember(remembered)
        self._timed("remember", t)
        return out

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Parse and score a batch at once, without holding anything for the watermark (each
        event sees what the history holds and the earlier events of the batch); every valid
        record yields exactly one `ScoredInteraction`, in input order."""
        t = time.perf_counter()
        parsed, dead = self.parse_records(records)
        self._timed("parse", t)
        items = [Pending(p.interaction, arrival_of(p.record)) for p in parsed]
        return BatchResult(scored=self.score(items), dead=dead)
