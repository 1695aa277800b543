"""The telemetry sink's rows and SQL: records to ``telemetry_events`` rows, and the upserts.

Everything here is free of Kafka and of the sink's process loop (`consumers.telemetry_sink`):

- pure functions that validate an ``interactions.scored`` record into an `Item` (its row, or
  its dead letter), map a `ScoredInteraction` to its row, deduplicate a batch by event id, build
  the upsert's JSON parameter and the offsets to commit after a batch;
- the one upsert statement (`UPSERT_SQL`) and the two ways the sink runs it on a psycopg
  connection: the whole batch in one statement (`upsert_batch`), or row by row in savepoints
  (`upsert_rows_one_by_one`), which keeps the rows PostgreSQL accepts and returns the ones it
  refuses for their data.

The sink decides what a failure means (retry, dead letter); these functions only raise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from schemas.dlq import DeadLetter
from schemas.interaction import ScoredInteraction

if TYPE_CHECKING:
    import psycopg

STAGE = "sink"

# (column, PostgreSQL type) of every column the sink writes, in table order. The table itself
# is created by consumers/migrations/; ingested_at and updated_at are filled by the database.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "text"),
    ("source", "text"),
    ("event_type", "text"),
    ("event_time", "timestamptz"),
    ("record_key", "text"),
    ("scorable", "boolean"),
    ("outcome", "text"),
    ("payload", "jsonb"),
    ("interaction", "jsonb"),
    ("score", "double precision"),
    ("factors", "jsonb"),
    ("weights", "jsonb"),
    ("inputs", "jsonb"),
    ("threshold", "double precision"),
    ("high_value", "boolean"),
    ("scorer_version", "text"),
    ("scored_at", "timestamptz"),
    ("schema_version", "integer"),
    ("kafka_topic", "text"),
    ("kafka_partition", "integer"),
    ("kafka_offset", "bigint"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)

_names = ", ".join(COLUMN_NAMES)
UPSERT_SQL = (
    f"INSERT INTO telemetry_events AS t ({_names})\n"
    f"SELECT {_names}\n"
    "FROM jsonb_to_recordset(%s::jsonb) AS r("
    + ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
    + ")\n"
    "ON CONFLICT (event_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in COLUMN_NAMES if name != "event_id")
    + ", updated_at = now()\n"
    "WHERE t.scored_at <= EXCLUDED.scored_at"
)

SinkRow = dict[str, Any]


# --- records to rows ---------------------------------------------------------------------------


def row_from_scored(
    scored: ScoredInteraction, *, topic: str, partition: int, offset: int
) -> SinkRow:
    """The ``telemetry_events`` row for one scored interaction read at (topic, partition, offset).

    JSON columns hold plain JSON values (dicts, lists); the factor and weight objects leave out
    their ``schema_version``. Lifecycle events (no score) get NULL score, factors and weights.
    """
    data = scored.model_dump(mode="json")
    interaction = data["interaction"]
    payload = interaction.pop("payload")
    for part in ("factors", "weights"):
        if data[part] is not None:
            data[part].pop("schema_version", None)
    return {
        "event_id": interaction["event_id"],
        "source": interaction["source"],
        "event_type": interaction["event_type"],
        "event_time": scored.interaction.timestamp,
        "record_key": interaction["key"],
        "scorable": interaction["scorable"],
        "outcome": interaction["outcome"],
        "payload": payload,
        "interaction": interaction,
        "score": scored.score,
        "factors": data["factors"],
        "weights": data["weights"],
        "inputs": data["inputs"],
        "threshold": scored.threshold,
        "high_value": scored.high_value,
        "scorer_version": scored.scorer_version,
        "scored_at": scored.scored_at,
        "schema_version": scored.schema_version,
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def row_json(row: SinkRow) -> str:
    """One row as a JSON object (timestamps ISO 8601); ValueError for NaN or infinity."""
    return json.dumps(
        row, default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    )


def dedupe_rows(rows: Iterable[SinkRow]) -> list[SinkRow]:
    """One row per event id: the latest scoring, and of equal ones the last read; input order."""
    best: dict[str, SinkRow] = {}
    for row in rows:
        old = best.get(row["event_id"])
        if old is None or (row["scored_at"], row["kafka_offset"]) >= (
            old["scored_at"],
            old["kafka_offset"],
        ):
            best[row["event_id"]] = row
    return list(best.values())


@dataclass
class Item:
    """One consumed record of a batch: its row to write, or its dead letter."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None = None
    row: SinkRow | None = None
    row_json: str | None = None
    letter: DeadLetter | None = None


def parse_record(
    value: bytes | None, key: bytes | None, *, topic: str, partition: int, offset: int
) -> Item:
    """Validate one ``interactions.scored`` record: an `Item` with a row or a dead letter."""
    item = Item(topic, partition, offset, key, value)
    where = {"topic": topic, "partition": partition, "offset": offset}
    if value is None:
        item.letter = dead_letter(None, key=key, error="empty record value", **where)
        return item
    try:
        scored = ScoredInteraction.model_validate_json(value)
        row = row_from_scored(scored, topic=topic, partition=partition, offset=offset)
        item.row_json = row_json(row)
        item.row = row
    except (ValidationError, ValueError) as exc:
        item.letter = dead_letter(
            value, key=key, error=f"not a valid ScoredInteraction: {exc}", **where
        )
    return item


def dead_letter(value: bytes | None, *, key: bytes | None, error: str, **fields: Any) -> DeadLetter:
    """A stage-``sink`` dead letter: the whole value, or its first `DEAD_LETTER_MAX_BYTES`."""
    return DeadLetter.from_bytes(value or b"", key=key, error=error, stage=STAGE, **fields)


def rows_to_write(items: Iterable[Item]) -> list[tuple[SinkRow, str]]:
    """The rows of a batch's valid items, deduplicated by event id, each with its `row_json`."""
    valid = [i for i in items if i.row is not None and i.row_json is not None]
    text = {id(i.row): i.row_json or "" for i in valid}
    return [(row, text[id(row)]) for row in dedupe_rows(i.row for i in valid if i.row)]


def reject_items(items: Iterable[Item], rejected: Iterable[tuple[SinkRow, Exception]]) -> int:
    """Turn the items whose event PostgreSQL refused into dead letters (kind ``rejected``).

    Every item of a refused event id gets its letter (a batch may carry one event twice);
    returns how many items were turned.
    """
    by_id = {row["event_id"]: exc for row, exc in rejected}
    turned = 0
    for item in items:
        if item.row is None or item.row["event_id"] not in by_id:
            continue
        item.letter = dead_letter(
            item.value,
            key=item.key,
            topic=item.topic,
            partition=item.partition,
            offset=item.offset,
            source=item.row["source"],
            event_type=item.row["event_type"],
            event_id=item.row["event_id"],
            error=f"refused by PostgreSQL: {by_id[item.row['event_id']]}",
            error_kind="rejected",
        )
        turned += 1
    return turned


def commit_positions(items: Iterable[Item]) -> dict[tuple[str, int], int]:
    """The offsets to commit after ``items``: per (topic, partition), the last offset + 1."""
    positions: dict[tuple[str, int], int] = {}
    for item in items:
        tp = (item.topic, item.partition)
        positions[tp] = max(positions.get(tp, -1), item.offset + 1)
    return positions


def batch_document(rows: Sequence[SinkRow | str]) -> str:
    """The JSON array parameter of `UPSERT_SQL` (rows given as dicts or as `row_json` text)."""
    return "[" + ",".join(r if isinstance(r, str) else row_json(r) for r in rows) + "]"


# --- the upserts -------------------------------------------------------------------------------


def is_data_error(exc: BaseException) -> bool:
    """Whether PostgreSQL refused the statement for its data (not for being unavailable)."""
    import psycopg

    return isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError)


def upsert_batch(conn: psycopg.Connection[Any], texts: Sequence[str]) -> int:
    """Upsert the rows (`row_json` texts) in one transaction, one statement; rows written.

    Raises the psycopg error as it comes (nothing is written then).
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(UPSERT_SQL, (batch_document(texts),))
        return max(cur.rowcount, 0)


def upsert_rows_one_by_one(
    conn: psycopg.Connection[Any], rows: Sequence[tuple[SinkRow, str]]
) -> tuple[int, list[tuple[SinkRow, Exception]]]:
    """Upsert ``rows`` (each with its `row_json`) in one transaction, one savepoint per row.

    Returns the rows written and the rows PostgreSQL refused for their data, with the error;
    any other database error is raised (and nothing is written).
    """
    import psycopg

    rejected: list[tuple[SinkRow, Exception]] = []
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        for row, text in rows:
            try:
                with conn.transaction():  # a savepoint per row
                    cur.execute(UPSERT_SQL, (batch_document([text]),))
                    written += max(cur.rowcount, 0)
            except psycopg.Error as exc:
                if not is_data_error(exc):
                    raise
                rejected.append((row, exc))
    return written, rejected
