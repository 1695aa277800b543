"""The telemetry sink without services: row mapping, batching helpers, retry and rebalance logic."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers import telemetry_sink as ts
from consumers.migrate import load_migrations
from consumers.telemetry_sink import (
    COLUMN_NAMES,
    UPSERT_SQL,
    Item,
    RetryableError,
    TelemetrySink,
    batch_document,
    commit_positions,
    dedupe_rows,
    parse_record,
    row_from_scored,
    row_json,
)
from learnstream.core.settings import Settings
from learnstream.postgres import redact
from schemas.interaction import FactorScores, Interaction, ScoredInteraction, ScoreWeights
from tests.fakes import FakeConsumer, FakeMessage, FakeTP

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIGRATIONS = Path(ts.__file__).parent / "migrations"


def scored(event_id: str = "e1", *, score: float | None = 0.8, **kw: Any) -> ScoredInteraction:
    interaction = Interaction(
        event_id=event_id,
        source="aidb",
        event_type="query_completed" if score is not None else "session_started",
        key="session-1",
        timestamp=T0,
        scorable=score is not None,
        query="how do I rotate logs",
        payload={"event_type": "query_completed", "session_id": "session-1"},
    )
    if score is None:
        return ScoredInteraction(interaction=interaction, scored_at=T0, **kw)
    return ScoredInteraction(
        interaction=interaction,
        score=score,
        factors=FactorScores(outcome=1, feedback=0.5, reusability=0.3, complexity=0.2, novelty=1),
        weights=ScoreWeights(),
        inputs={"feedback": {"signal": "none"}},
        high_value=score >= 0.7,
        scorer_version="v1",
        scored_at=kw.pop("scored_at", T0 + timedelta(seconds=1)),
        **kw,
    )


# --- rows ------------------------------------------------------------------------------------


def test_row_from_scored_maps_every_column() -> None:
    row = row_from_scored(scored(), topic="interactions.scored", partition=2, offset=41)
    assert tuple(row) == COLUMN_NAMES
    assert row["event_id"] == "e1"
    assert row["source"] == "aidb"
    assert row["event_time"] == T0
    assert row["record_key"] == "session-1"
    assert row["payload"] == {"event_type": "query_completed", "session_id": "session-1"}
    assert "payload" not in row["interaction"]
    assert row["interaction"]["query"] == "how do I rotate logs"
    assert row["factors"] == {
        "outcome": 1.0,
        "feedback": 0.5,
        "reusability": 0.3,
        "complexity": 0.2,
        "novelty": 1.0,
    }
    assert "schema_version" not in row["weights"]
    assert (row["score"], row["high_value"], row["scorer_version"]) == (0.8, True, "v1")
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        "interactions.scored",
        2,
        41,
    )
    decoded = json.loads(row_json(row))
    assert decoded["event_time"] == "2025-03-01T12:00:00+00:00"


def test_lifecycle_row_has_nulls() -> None:
    row = row_from_scored(scored(score=None), topic="t", partition=0, offset=0)
    assert row["score"] is None
    assert row["factors"] is None
    assert row["weights"] is None
    assert row["scorer_version"] is None
    assert row["high_value"] is False
    assert row["scorable"] is False


def test_parse_record_valid_and_invalid() -> None:
    good = parse_record(
        scored().model_dump_json().encode(), b"e1", topic="t", partition=1, offset=7
    )
    assert good.letter is None and good.row is not None and good.row_json is not None

    bad = parse_record(b"{nope", b"k", topic="t", partition=1, offset=8)
    assert bad.row is None and bad.letter is not None
    assert (bad.letter.stage, bad.letter.topic, bad.letter.partition, bad.letter.offset) == (
        "sink",
        "t",
        1,
        8,
    )
    assert bad.letter.original() == b"{nope"
    assert bad.letter.error.startswith("not a valid ScoredInteraction")

    empty = parse_record(None, b"k", topic="t", partition=0, offset=0)
    assert empty.letter is not None and empty.letter.error == "empty record value"

    # A NaN written by a lenient writer: stored as null, never as JSON PostgreSQL refuses.
    raw = scored().model_dump_json().replace('"signal":"none"', '"signal":NaN').encode()
    assert b"NaN" in raw
    nan = parse_record(raw, None, topic="t", partition=0, offset=1)
    assert nan.row is not None and nan.row_json is not None
    assert nan.row["inputs"] == {"feedback": {"signal": None}}
    json.loads(nan.row_json, parse_constant=lambda c: pytest.fail(f"{c} in row JSON"))


def test_dead_letters_keep_at_most_dlq_keep_bytes() -> None:
    small = ts.dead_letter(b"abc", key=b"k", error="bad", topic="t")
    assert (small.original(), small.error, small.stage) == (b"abc", "bad", "sink")
    big = b"x" * (ts.DLQ_KEEP_BYTES + 10)
    letter = ts.dead_letter(big, key=None, error="bad")
    assert letter.original() == big[: ts.DLQ_KEEP_BYTES]
    assert f"first {ts.DLQ_KEEP_BYTES} of {len(big)} bytes" in letter.error
    assert len(letter.model_dump_json()) < 1_000_000


def test_row_json_refuses_nan() -> None:
    row = row_from_scored(scored(), topic="t", partition=0, offset=0)
    row["inputs"] = {"x": float("nan")}
    with pytest.raises(ValueError):
        row_json(row)


def test_dedupe_keeps_the_latest_scoring_then_the_last_read() -> None:
    a_old = row_from_scored(scored("a", scored_at=T0), topic="t", partition=0, offset=1)
    a_new = row_from_scored(
        scored("a", scored_at=T0 + timedelta(hours=1)), topic="t", partition=0, offset=2
    )
    a_replayed_old = row_from_scored(scored("a", scored_at=T0), topic="t", partition=0, offset=3)
    b1 = row_from_scored(scored("b"), topic="t", partition=1, offset=1)
    b2 = row_from_scored(scored("b"), topic="t", partition=1, offset=5)
    out = dedupe_rows([a_old, b1, a_new, a_replayed_old, b2])
    assert [r["event_id"] for r in out] == ["a", "b"]
    assert out[0]["kafka_offset"] == 2
    assert out[1]["kafka_offset"] == 5


def test_commit_positions_are_last_offset_plus_one() -> None:
    items = [Item("t", 0, 5, None), Item("t", 0, 3, None), Item("t", 1, 0, None)]
    assert commit_positions(items) == {("t", 0): 6, ("t", 1): 1}
    assert commit_positions([]) == {}


def test_batch_document_is_a_json_array() -> None:
    row = row_from_scored(scored(), topic="t", partition=0, offset=0)
    doc = batch_document([row, row_json(row)])
    assert [r["event_id"] for r in json.loads(doc)] == ["e1", "e1"]
    assert batch_document([]) == "[]"


def test_upsert_statement_and_migration_agree() -> None:
    table = (MIGRATIONS / "0001_telemetry_events.sql").read_text()
    body = table.split("CREATE TABLE telemetry_events (", 1)[1].split(");", 1)[0]
    declared = {
        m.group(1)
        for m in re.finditer(r"^\s+([a-z_]+)\s+", body, re.MULTILINE)
        if m.group(1) != "CONSTRAINT"
    }
    assert set(COLUMN_NAMES) | {"ingested_at", "updated_at"} == declared
    for name in COLUMN_NAMES:
        assert name in UPSERT_SQL
    assert "ON CONFLICT (event_id) DO UPDATE" in UPSERT_SQL
    assert "event_id = EXCLUDED.event_id" not in UPSERT_SQL
    assert "ingested_at" not in UPSERT_SQL  # the first write's time is kept


def test_migrations_load_in_order() -> None:
    migrations = load_migrations()
    assert migrations[0].version == 1
    assert migrations[0].name == "telemetry_events"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    for path in MIGRATIONS.glob("*.sql"):
        assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", path.name)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://h/db") == "postgresql://h/db"


# --- outage handling with a fake consumer ----------------------------------------------------


def fake_sink(consumer: FakeConsumer, fail: int, **kw: Any) -> tuple[TelemetrySink, list[int]]:
    sink = TelemetrySink(
        Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}),
        postgres_url="postgresql://nowhere/db",
        registry=CollectorRegistry(),
        backoff_initial=0.01,
        backoff_max=0.02,
        consumer=consumer,  # type: ignore[arg-type]
        **kw,
    )
    writes: list[int] = []

    def write(rows: list[dict[str, Any]]) -> list[Any]:
        if len(writes) < fail:
            writes.append(-len(rows))
            raise RetryableError("PostgreSQL write failed: down")
        writes.append(len(rows))
        return []

    sink._write = write  # type: ignore[method-assign]
    return sink, writes


def batch(*coords: tuple[int, int]) -> list[FakeMessage]:
    return [
        FakeMessage("t", p, o, scored(f"e{p}-{o}").model_dump_json().encode()) for p, o in coords
    ]


def test_outage_retries_the_same_batch_paused_and_commits_after_the_write() -> None:
    consumer = FakeConsumer([batch((0, 0), (0, 1), (1, 0))])
    sink, writes = fake_sink(consumer, fail=3)
    assert sink.run_once() == 3
    assert writes == [-3, -3, -3, 3]  # the same batch each time
    assert consumer.calls.count("consume") == 1  # nothing more consumed meanwhile
    assert "poll" in consumer.calls  # the group membership was kept alive
    last_pause = len(consumer.calls) - 1 - consumer.calls[::-1].index("pause")
    commit = consumer.calls.index("commit")
    assert consumer.calls.index("pause") < commit  # paused during the outage
    assert last_pause < commit < consumer.calls.index("resume")  # resumed once committed
    assert consumer.commits == [[("t", 0, 2), ("t", 1, 1)]]
    registry = sink.metrics.registry
    assert registry.get_sample_value("learnstream_sink_db_errors_total") == 3
    assert registry.get_sample_value("learnstream_sink_db_up") == 0  # _write is faked
    assert registry.get_sample_value("learnstream_sink_batches_total") == 1


def test_stop_during_an_outage_commits_nothing() -> None:
    consumer = FakeConsumer([batch((0, 0))])
    stop = threading.Event()
    sink, _ = fake_sink(consumer, fail=10**9, stop=stop)
    polls = 0

    def on_poll() -> None:
        nonlocal polls
        polls += 1
        if polls == 5:
            stop.set()

    consumer.on_poll = on_poll
    assert sink.run_once() == 0
    assert consumer.commits == []
    sink.close()
    assert consumer.commits == []  # closing does not commit the unwritten batch either
    assert consumer.calls[-1] == "close"


def test_revocation_during_an_outage_hands_the_records_back() -> None:
    consumer = FakeConsumer([batch((0, 0), (1, 0), (1, 1))])
    sink, writes = fake_sink(consumer, fail=3)

    def revoke_partition_1() -> None:
        consumer.on_poll = None
        sink._on_revoke(consumer, [FakeTP("t", 1)])  # type: ignore[arg-type, list-item]

    consumer.on_poll = revoke_partition_1
    assert sink.run_once() == 1
    # The try inside the revocation failed too, so partition 1's records were left to the
    # next owner: only partition 0 was written and committed.
    assert writes[-1] == 1
    assert consumer.commits == [[("t", 0, 1)]]


def test_revocation_also_forgets_records_that_arrived_while_paused() -> None:
    consumer = FakeConsumer([batch((0, 0), (1, 0))])
    sink, writes = fake_sink(consumer, fail=3)
    [late] = batch((1, 1))  # fetched before the pause, handed out during the outage
    polls = 0

    def on_poll() -> FakeMessage | None:
        nonlocal polls
        polls += 1
        if polls == 1:
            return late
        if polls == 2:
            sink._on_revoke(consumer, [FakeTP("t", 1)])  # type: ignore[arg-type, list-item]
        return None

    consumer.on_poll = on_poll
    assert sink.run_once() == 1
    consumer.on_poll = None
    sink.run_once()  # the next batch would have carried the held record
    assert writes[-1] == 1 and sum(n for n in writes if n > 0) == 1
    assert consumer.commits == [[("t", 0, 1)]]  # nothing of partition 1: not ours any more


def test_a_revocation_inside_the_next_consume_forgets_held_records() -> None:
    consumer = FakeConsumer([batch((0, 0), (1, 0))])
    sink, writes = fake_sink(consumer, fail=1)
    [late] = batch((1, 1))
    arriving = iter([late])
    consumer.on_poll = lambda: next(arriving, None)
    assert sink.run_once() == 2  # held: (1, 1), polled while paused during the outage
    consumer.on_poll = None

    def revoke() -> None:
        consumer.on_consume = None
        sink._on_revoke(consumer, [FakeTP("t", 1)])  # type: ignore[arg-type, list-item]

    consumer.on_consume = revoke
    assert sink.run_once() == 0
    assert writes == [-2, 2]
    assert consumer.commits == [[("t", 0, 1), ("t", 1, 1)]]  # (1, 1) is the next owner's


def test_invalid_records_are_dead_lettered_before_the_commit() -> None:
    msgs = [*batch((0, 0)), FakeMessage("t", 0, 1, b"garbage")]
    consumer = FakeConsumer([msgs])
    sink, writes = fake_sink(consumer, fail=0)
    sent: list[list[Item]] = []

    def send(items: list[Item]) -> None:
        assert consumer.commits == []
        sent.append(items)

    sink._send_letters = send  # type: ignore[method-assign]
    assert sink.run_once() == 2
    assert writes == [1]
    assert [i.offset for i in sent[0]] == [1]
    assert consumer.commits == [[("t", 0, 2)]]


def test_commit_failures_retry_only_retriable_errors(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import KafkaError, KafkaException

    consumer = FakeConsumer([])
    sink, _ = fake_sink(consumer, fail=0)
    registry = sink.metrics.registry

    def raising(err: KafkaError) -> Any:
        def commit(offsets: list[Any], asynchronous: bool) -> list[Any]:
            raise KafkaException(err)

        return commit

    monkeypatch.setattr(
        consumer, "commit", raising(KafkaError(KafkaError._TRANSPORT, "down", retriable=True))
    )
    with pytest.raises(RetryableError, match="offset commit failed") as raised:
        sink._commit([Item("t", 0, 4, None)])
    assert raised.value.kind == "kafka"
    assert registry.get_sample_value("learnstream_sink_commit_errors_total") == 0

    monkeypatch.setattr(consumer, "commit", raising(KafkaError(KafkaError.UNKNOWN_MEMBER_ID)))
    with caplog.at_level(logging.WARNING, logger="learnstream.sink"):
        sink._commit([Item("t", 0, 4, None)])  # not raised: the batch is read again
    assert "the batch will be read again" in caplog.text
    assert registry.get_sample_value("learnstream_sink_commit_errors_total") == 1

    def partly(offsets: list[Any], asynchronous: bool) -> list[Any]:
        refused: Any = FakeTP(offsets[0].topic, offsets[0].partition, offsets[0].offset)
        refused.error = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
        return [refused, *offsets[1:]]

    monkeypatch.setattr(consumer, "commit", partly)
    with caplog.at_level(logging.WARNING, logger="learnstream.sink"):
        sink._commit([Item("t", 0, 4, None), Item("t", 1, 0, None)])
    assert "offset commit for t[0] failed" in caplog.text
    assert registry.get_sample_value("learnstream_sink_commit_errors_total") == 2
