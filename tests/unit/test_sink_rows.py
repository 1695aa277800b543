"""The sink's rows module without services: batch rows, rejected rows, and what it imports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg

from consumers import sink_rows
from consumers.sink_rows import (
    Item,
    is_data_error,
    parse_record,
    reject_items,
    row_from_scored,
    rows_to_write,
)
from schemas.interaction import Interaction, ScoredInteraction

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def record(event_id: str, *, scored_at: datetime = T0) -> bytes:
    interaction = Interaction(
        event_id=event_id,
        source="aidb",
        event_type="session_started",
        key="session-1",
        timestamp=T0,
        scorable=False,
        payload={"event_type": "session_started"},
    )
    return (
        ScoredInteraction(interaction=interaction, scored_at=scored_at).model_dump_json().encode()
    )


def items() -> list[Item]:
    later = T0 + timedelta(minutes=5)
    return [
        parse_record(record("a"), b"k", topic="t", partition=0, offset=0),
        parse_record(b"{broken", b"k", topic="t", partition=0, offset=1),
        parse_record(record("b"), b"k", topic="t", partition=1, offset=0),
        parse_record(record("a", scored_at=later), b"k", topic="t", partition=0, offset=2),
    ]


def test_rows_to_write_dedupes_and_keeps_each_rows_text() -> None:
    rows = rows_to_write(items())
    assert [(row["event_id"], row["kafka_offset"]) for row, _ in rows] == [("a", 2), ("b", 0)]
    for row, text in rows:
        assert json.loads(text)["event_id"] == row["event_id"]
        assert json.loads(text)["kafka_offset"] == row["kafka_offset"]
    assert rows_to_write([items()[1]]) == []  # only an invalid record: nothing to write


def test_reject_items_dead_letters_every_item_of_a_refused_event() -> None:
    batch = items()
    rows = dict((row["event_id"], row) for row, _ in rows_to_write(batch))
    turned = reject_items(batch, [(rows["a"], ValueError("NUL in text"))])
    assert turned == 2  # offsets 0 and 2 both carry event a
    lettered = [i for i in batch if i.letter is not None]
    assert [(i.partition, i.offset) for i in lettered] == [(0, 0), (0, 1), (0, 2)]
    for item in lettered:
        letter = item.letter
        assert letter is not None
        if item.offset == 1:
            assert letter.error_kind != "rejected"  # invalid, from parse_record
            continue
        assert (letter.error_kind, letter.event_id, letter.source) == ("rejected", "a", "aidb")
        assert letter.error == "refused by PostgreSQL: NUL in text"
        assert letter.original() == item.value
    assert batch[2].letter is None  # event b was written
    assert reject_items(batch, []) == 0


def test_data_errors_are_told_from_outages() -> None:
    assert is_data_error(psycopg.errors.DataError("bad value"))
    assert is_data_error(psycopg.errors.UniqueViolation("dup"))  # an IntegrityError
    assert not is_data_error(psycopg.OperationalError("connection refused"))
    assert not is_data_error(psycopg.errors.UndefinedTable("no table"))
    assert not is_data_error(ValueError("x"))


def test_row_for_the_same_record_is_the_same_row() -> None:
    scored = ScoredInteraction.model_validate_json(record("c"))
    one = row_from_scored(scored, topic="t", partition=3, offset=9)
    two = row_from_scored(scored, topic="t", partition=3, offset=9)
    assert one == two and one["kafka_partition"] == 3


def test_the_rows_module_needs_no_kafka_client_or_sink_loop() -> None:
    code = (
        "import sys, consumers.sink_rows\n"
        "bad = [m for m in ('confluent_kafka', 'consumers.telemetry_sink', 'consumers.base')"
        " if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert sink_rows.STAGE == "sink"
