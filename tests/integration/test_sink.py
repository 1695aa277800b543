"""The PostgreSQL telemetry sink against the dev broker and real PostgreSQL (pgserver)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from consumers.migrate import Migration, MigrationError, applied_versions, load_migrations, migrate
from consumers.sink_rows import row_from_scored, row_json, upsert_batch, upsert_rows_one_by_one
from consumers.telemetry_sink import TelemetrySink
from learnstream.core.settings import Settings
from learnstream.postgres import connect, postgres_url
from schemas.interaction import FactorScores, Interaction, ScoredInteraction, ScoreWeights
from schemas.topics import DLQ, INTERACTIONS_SCORED
from tests.integration.kafka_helpers import consume
from tests.integration.workers import fault_report

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# --- helpers ---------------------------------------------------------------------------------


def scored(event_id: str, i: int = 0, *, lifecycle: bool = False) -> ScoredInteraction:
    """A realistic ScoredInteraction (or a lifecycle event with a null score)."""
    interaction = Interaction(
        event_id=event_id,
        source="ralph",
        event_type="task_started" if lifecycle else "task_completed",
        key=f"task-{i % 3}",
        timestamp=T0 + timedelta(seconds=i),
        scorable=not lifecycle,
        query=None if lifecycle else f"fix the flaky test number {i}",
        outcome="unknown" if lifecycle else "success",
        iterations=None if lifecycle else 2,
        payload={
            "event": "task_started" if lifecycle else "task_completed",
            "task_id": f"task-{i % 3}",
            "n": i,
        },
    )
    if lifecycle:
        return ScoredInteraction(interaction=interaction, scored_at=T0 + timedelta(minutes=1))
    factors = FactorScores(outcome=1.0, feedback=0.5, reusability=0.3, complexity=0.5, novelty=1.0)
    return ScoredInteraction(
        interaction=interaction,
        score=0.71,
        factors=factors,
        weights=ScoreWeights(),
        inputs={"outcome": {"outcome": "success", "iterations": 2}, "reusability": {"similar": 0}},
        high_value=True,
        scorer_version="test-1",
        scored_at=T0 + timedelta(minutes=1, seconds=i),
    )


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce (key, value) records and wait for every acknowledgement."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert not errors


def produce_scored(bootstrap: str, topic: str, items: list[ScoredInteraction]) -> None:
    produce(bootstrap, topic, [(s.event_id.encode(), s.model_dump_json().encode()) for s in items])


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def fetch_rows(url: str, ids: list[str]) -> list[dict[str, Any]]:
    """telemetry_events rows for ``ids`` (empty when the table does not exist yet)."""
    try:
        with psycopg.connect(url, row_factory=dict_row, connect_timeout=3) as conn:
            return conn.execute(
                "SELECT * FROM telemetry_events WHERE event_id = ANY(%s) ORDER BY event_id",
                (ids,),
            ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return []


def count_rows(url: str, ids: list[str]) -> int:
    return len(fetch_rows(url, ids))


def offsets(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the high watermarks) over the topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        committed = sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
        high = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
    finally:
        c.close()
    return committed, high


def make_sink(
    bootstrap: str, url: str, group: str, topic: str = INTERACTIONS_SCORED.name, **kw: Any
) -> TelemetrySink:
    settings = Settings(kafka={"bootstrap_servers": bootstrap})
    return TelemetrySink(
        settings,
        postgres_url=url,
        group_id=group,
        topic=topic,
        registry=CollectorRegistry(),
        poll_timeout=0.2,
        **kw,
    )


@contextmanager
def running(sink: TelemetrySink) -> Iterator[TelemetrySink]:
    """Run ``sink`` in a thread; stop it (and require a clean stop) at the end."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sink.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.stop.set()
        thread.join(30)
        assert not thread.is_alive(), "sink did not stop"
    assert not errors, errors


def metric(sink: TelemetrySink, name: str, **labels: str) -> float:
    return sink.metrics.registry.get_sample_value(name, labels or None) or 0.0


@contextmanager
def private_postgres() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL of its own in a fresh folder under /tmp; (folder, URL).

    Not under pytest's temp folder: as root, pgserver runs PostgreSQL as the ``pgserver``
    user, and every pytest session that starts resets ``/tmp/pytest-of-root`` to mode 0700,
    which would cut a server there off from its own data (PANIC) when test runs overlap.
    The path is short, so the server's socket lives in its folder and survives a restart.
    """
    import shutil
    import tempfile

    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="lspg")) / "pg"
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield folder, server.get_uri()
    finally:
        pgserver.get_server(folder, cleanup_mode="stop").cleanup()
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """This module's PostgreSQL (instead of the session one; see `private_postgres`)."""
    with private_postgres() as (_, url):
        yield url


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL for one test, which it may stop and start again."""
    with private_postgres() as server:
        yield server


@pytest.fixture
def database(pg_url: str, unique: str) -> Iterator[str]:
    """A fresh, empty database on the session server; its conninfo."""
    name = f"t_{unique}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(pg_url, dbname=name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# --- one sink run on interactions.scored, shared by the first tests ---------------------------


class Landed:
    """Records produced to interactions.scored and written by one sink run."""

    def __init__(self, bootstrap: str, url: str, group: str, items: list[ScoredInteraction]):
        self.bootstrap = bootstrap
        self.url = url
        self.group = group
        self.items = items
        self.ids = [s.event_id for s in items]


@pytest.fixture(scope="module")
def landed(kafka_broker: Any, pg_url: str) -> Landed:
    run = uuid.uuid4().hex[:8]
    items = [scored(f"sink-{run}-{i:02d}", i) for i in range(20)]
    items += [scored(f"sink-{run}-life-{i}", i, lifecycle=True) for i in range(3)]
    bootstrap = kafka_broker.bootstrap_servers
    produce_scored(bootstrap, INTERACTIONS_SCORED.name, items)
    group = f"sink-test-{run}"
    sink = make_sink(bootstrap, pg_url, group)
    ids = [s.event_id for s in items]
    with running(sink):
        wait_for(lambda: count_rows(pg_url, ids) == len(ids), what="rows")
        # A batch counts once its offsets are committed, a moment after its rows are visible.
        wait_for(lambda: metric(sink, "learnstream_sink_batches_total") >= 1, what="a batch")
        assert metric(sink, "learnstream_sink_rows_written_total") >= len(ids)
    return Landed(bootstrap, pg_url, group, items)


def test_rows_land_with_the_right_columns(landed: Landed) -> None:
    rows = {r["event_id"]: r for r in fetch_rows(landed.url, landed.ids)}
    assert set(rows) == set(landed.ids)
    first = landed.items[5]
    row = rows[first.event_id]
    assert row["source"] == "ralph"
    assert row["event_type"] == "task_completed"
    assert row["event_time"] == T0 + timedelta(seconds=5)
    assert row["record_key"] == "task-2"
    assert row["scorable"] is True
    assert row["outcome"] == "success"
    assert row["payload"] == {"event": "task_completed", "task_id": "task-2", "n": 5}
    assert row["interaction"]["query"] == "fix the flaky test number 5"
    assert "payload" not in row["interaction"]
    assert row["score"] == pytest.approx(0.71)
    assert row["factors"] == {
        "outcome": 1.0,
        "feedback": 0.5,
        "reusability": 0.3,
        "complexity": 0.5,
        "novelty": 1.0,
    }
    assert row["weights"]["outcome"] == pytest.approx(0.4)
    assert row["inputs"]["outcome"] == {"outcome": "success", "iterations": 2}
    assert row["high_value"] is True
    assert row["scorer_version"] == "test-1"
    assert row["scored_at"] == first.scored_at
    assert row["threshold"] == pytest.approx(0.7)
    assert row["kafka_topic"] == INTERACTIONS_SCORED.name
    assert row["kafka_partition"] >= 0
    assert row["kafka_offset"] >= 0
    assert row["ingested_at"] is not None
    # the group's offsets cover what it wrote (nothing is left uncommitted at the end)
    committed, high = offsets(landed.bootstrap, landed.group, INTERACTIONS_SCORED.name)
    assert committed == high


def test_lifecycle_event_is_stored_with_nulls(landed: Landed) -> None:
    life = [s.event_id for s in landed.items if s.score is None]
    rows = fetch_rows(landed.url, life)
    assert len(rows) == 3
    for row in rows:
        assert row["event_type"] == "task_started"
        assert row["scorable"] is False
        assert row["score"] is None
        assert row["factors"] is None
        assert row["weights"] is None
        assert row["scorer_version"] is None
        assert row["high_value"] is False
        assert row["inputs"] == {}


def test_replay_upserts_without_duplicates(landed: Landed, unique: str) -> None:
    before = {r["event_id"]: r for r in fetch_rows(landed.url, landed.ids)}
    # Another group reads the whole topic again from the beginning.
    sink = make_sink(landed.bootstrap, landed.url, f"sink-replay-{unique}")

    def rewritten() -> bool:
        rows = fetch_rows(landed.url, landed.ids)
        return all(r["updated_at"] > before[r["event_id"]]["updated_at"] for r in rows)

    with running(sink):
        wait_for(rewritten, what="the replay to rewrite every row")
    after = fetch_rows(landed.url, landed.ids)
    assert len(after) == len(landed.ids)
    with psycopg.connect(landed.url) as conn:
        n = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM telemetry_events "
            "WHERE event_id = ANY(%s)",
            (landed.ids,),
        ).fetchone()
    assert n == (len(landed.ids), len(landed.ids))
    for row in after:
        old = before[row["event_id"]]
        assert row["ingested_at"] == old["ingested_at"]  # first write kept, row updated in place
        assert (row["score"], row["payload"]) == (old["score"], old["payload"])


# --- invalid records -------------------------------------------------------------------------


def test_invalid_records_go_to_the_dlq_and_the_sink_keeps_going(
    kafka_env: str, pg_url: str, unique: str
) -> None:
    # A topic of its own: garbage on the shared interactions.scored would trip other readers.
    topic = f"interactions.scored.sink-{unique}"
    good = [scored(f"inv-{unique}-{i}", i) for i in range(4)]
    nul = scored(f"inv-{unique}-nul", 9)
    nul.interaction.payload["text"] = "a NUL \x00 character PostgreSQL refuses"
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"bad-1", b'{"not": "a scored interaction"'),
        (b"bad-2", None),
        (nul.event_id.encode(), nul.model_dump_json().encode()),
    ]
    records += [(s.event_id.encode(), s.model_dump_json().encode()) for s in good]
    produce(kafka_env, topic, records)
    sink = make_sink(kafka_env, pg_url, f"sink-inv-{unique}", topic=topic)
    ids = [s.event_id for s in good]
    with running(sink):
        wait_for(lambda: count_rows(pg_url, ids) == len(ids), what="the valid rows")
        wait_for(lambda: offsets(kafka_env, sink.group_id, topic)[0] == len(records), what="commit")
    assert count_rows(pg_url, [nul.event_id]) == 0
    # What its periodic summary line says (LEARNSTREAM_SUMMARY_INTERVAL_S).
    assert sink.summary.total("read") == len(records)
    assert sink.summary.total("stored") == len(good)
    assert sink.summary.total("dead_letters") == 3
    assert sink.summary.line(60).startswith(f"sink: read {len(records)} (+{len(records)}, ")
    assert metric(sink, "learnstream_sink_invalid_total", reason="invalid") == 2
    assert metric(sink, "learnstream_sink_invalid_total", reason="rejected") == 1

    letters = consume(
        kafka_env,
        [DLQ.name],
        keep=lambda r: r.json().get("topic") == topic,
        until=lambda kept: len(kept) >= 3,
        timeout=20,
        settle=0.5,
    )
    assert len(letters) == 3
    by_key = {r.key: r.json() for r in letters}
    assert {r.headers["content-type"] for r in letters} == {b"application/json"}
    for letter in by_key.values():
        assert letter["stage"] == "sink"
        assert letter["topic"] == topic
        assert letter["partition"] is not None and letter["offset"] is not None
    import base64

    assert base64.b64decode(by_key[b"bad-1"]["original_b64"]) == records[0][1]
    assert by_key[b"bad-1"]["error_kind"] == "invalid"
    assert by_key[b"bad-2"]["error"] == "empty record value"
    rejected = by_key[nul.event_id.encode()]
    assert rejected["error_kind"] == "rejected"
    assert rejected["event_id"] == nul.event_id
    assert base64.b64decode(rejected["original_b64"]) == records[2][1]  # as read, replayable
    assert "refused by PostgreSQL" in rejected["error"]


# --- PostgreSQL restart mid-stream -----------------------------------------------------------


def test_sink_survives_a_postgres_restart_without_loss(
    kafka_env: str, own_postgres: tuple[Path, str], unique: str
) -> None:
    import pgserver

    folder, url = own_postgres
    topic = f"interactions.scored.restart-{unique}"
    group = f"sink-restart-{unique}"
    first = [scored(f"rs-{unique}-a{i:03d}", i) for i in range(60)]
    second = [scored(f"rs-{unique}-b{i:03d}", i) for i in range(60)]
    ids = [s.event_id for s in first + second]
    produce_scored(kafka_env, topic, first)
    # A short max.poll.interval.ms, shorter than the outage: only a sink that keeps polling
    # (partitions paused) during the outage keeps its partitions.
    sink = make_sink(
        kafka_env,
        url,
        group,
        topic=topic,
        batch_size=25,
        backoff_initial=0.1,
        backoff_max=1.0,
        consumer_config={"max.poll.interval.ms": 6000, "session.timeout.ms": 6000},
    )
    with running(sink):
        wait_for(lambda: count_rows(url, ids) == len(first), what="the first rows")
        wait_for(lambda: offsets(kafka_env, group, topic)[0] == len(first), what="first commit")
        assignments = metric(sink, "learnstream_sink_rebalances_total", kind="assign")

        pgserver.get_server(folder, cleanup_mode="stop").cleanup()  # PostgreSQL stops
        produce_scored(kafka_env, topic, second)
        wait_for(lambda: metric(sink, "learnstream_sink_db_errors_total") >= 3, what="retries")
        assert metric(sink, "learnstream_sink_db_up") == 0
        # Down for longer than max.poll.interval.ms; nothing is committed meanwhile
        # (bench/bench_faults.py sets LS_FAULT_OUTAGE_S=30).
        deadline = time.monotonic() + float(os.environ.get("LS_FAULT_OUTAGE_S", "7.5"))
        while time.monotonic() < deadline:
            assert offsets(kafka_env, group, topic)[0] == len(first)
            time.sleep(0.5)

        restarted = pgserver.get_server(folder, cleanup_mode="stop")  # same data folder
        back_at = time.monotonic()
        assert restarted.get_uri() == url
        wait_for(lambda: count_rows(url, ids) == len(ids), what="every row after the restart")
        recovery_s = time.monotonic() - back_at
        wait_for(lambda: offsets(kafka_env, group, topic)[0] == len(ids), what="final commit")
        # The consumer kept its partitions through the outage: no revocation, no loss.
        assert metric(sink, "learnstream_sink_rebalances_total", kind="revoke") == 0
        assert metric(sink, "learnstream_sink_rebalances_total", kind="lost") == 0
        assert metric(sink, "learnstream_sink_rebalances_total", kind="assign") == assignments
        assert metric(sink, "learnstream_sink_commit_errors_total") == 0
        assert metric(sink, "learnstream_sink_db_up") == 1

    committed, high = offsets(kafka_env, group, topic)
    assert committed == high == len(ids)
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT event_id FROM telemetry_events ORDER BY event_id").fetchall()
    outage = os.environ.get("LS_FAULT_OUTAGE_S", "7.5")
    fault_report(
        f"PostgreSQL stopped for {outage} s under the sink",
        sent=len(ids),
        stored=len(got),
        distinct=len({g[0] for g in got}),
        recovery_s=recovery_s,
    )
    assert [g[0] for g in got] == sorted(ids)  # every event exactly once, nothing else

    # A new sink in the same group finds nothing left to read.
    again = make_sink(kafka_env, url, group, topic=topic)
    try:
        assert again.start()
        read = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (again.consumer.assignment() and read == 0):
            read += again.run_once()
        for _ in range(5):
            read += again.run_once()
        assert again.consumer.assignment()
        assert read == 0
    finally:
        again.close()


# --- migrations ------------------------------------------------------------------------------


def test_migrations_are_recorded_and_idempotent(database: str) -> None:
    with connect(database) as conn:
        assert applied_versions(conn) == {}
        done = migrate(conn)
        assert done == [m.version for m in load_migrations()]
        assert 1 in done
        assert migrate(conn) == []  # twice: nothing to do
        recorded = applied_versions(conn)
        assert recorded[1][0] == "telemetry_events"
        assert recorded[1][1] == load_migrations()[0].checksum
        row = conn.execute(
            "SELECT count(*), min(applied_at) IS NOT NULL FROM schema_migrations"
        ).fetchone()
        assert row == (len(done), True)
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'telemetry_events'"
            )
        }
        assert {
            "telemetry_events_pkey",
            "telemetry_events_source_time_idx",
            "telemetry_events_event_time_idx",
            "telemetry_events_high_value_idx",
        } <= indexes


def test_concurrent_migrations_apply_once(database: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            with connect(database) as conn:
                barrier.wait()
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in load_migrations()]  # each applied exactly once


def test_failed_migration_is_rolled_back_and_not_recorded(database: str) -> None:
    good = Migration(1, "one", "CREATE TABLE one (x int);")
    bad = Migration(2, "two", "CREATE TABLE two (x int); SELECT no_such_column FROM one;")
    with connect(database) as conn:
        with pytest.raises(MigrationError, match="0002_two"):
            migrate(conn, [good, bad])
        assert set(applied_versions(conn)) == {1}
        assert conn.execute("SELECT to_regclass('two')").fetchone() == (None,)
        assert migrate(conn, [good]) == []


# --- the upserts on their own (consumers.sink_rows, no broker) -------------------------------


def test_upserts_write_keep_the_latest_and_report_refused_rows(database: str) -> None:
    def row(item: ScoredInteraction, offset: int) -> tuple[dict[str, Any], str]:
        r = row_from_scored(item, topic="interactions.scored", partition=0, offset=offset)
        return r, row_json(r)

    first, second = scored(f"u1-{database[-8:]}", 1), scored(f"u2-{database[-8:]}", 2)
    earlier = first.model_copy(update={"score": 0.1, "scored_at": T0})
    with connect(database) as conn:
        migrate(conn)
        assert upsert_batch(conn, [row(first, 0)[1], row(second, 1)[1]]) == 2
        assert upsert_batch(conn, [row(earlier, 2)[1]]) == 0  # never regresses a row
        stored = dict(conn.execute("SELECT event_id, score FROM telemetry_events").fetchall())
        assert stored == {first.event_id: 0.71, second.event_id: 0.71}

        nul = scored(f"u3-{database[-8:]}", 3)
        nul.interaction.payload["note"] = "a NUL \u0000 here"
        fine = scored(f"u4-{database[-8:]}", 4)
        with pytest.raises(psycopg.errors.DataError):
            upsert_batch(conn, [row(nul, 3)[1], row(fine, 4)[1]])
        written, rejected = upsert_rows_one_by_one(conn, [row(nul, 3), row(fine, 4)])
        assert written == 1
        assert [(r["event_id"], type(e).__name__) for r, e in rejected] == [
            (nul.event_id, "UntranslatableCharacter")
        ]
        ids = {r[0] for r in conn.execute("SELECT event_id FROM telemetry_events")}
        assert ids == {first.event_id, second.event_id, fine.event_id}


# --- embedded server and the CLI -------------------------------------------------------------


def test_embedded_postgres_when_no_url_is_configured() -> None:
    import shutil
    import tempfile

    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="lsdata"))  # not under pytest's: see private_postgres
    settings = Settings(data_dir=data_dir)
    url = postgres_url(settings)
    try:
        assert (settings.postgres_dir / "PG_VERSION").exists()
        with connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert postgres_url(settings) == url  # attaches to the running server
    finally:
        pgserver.get_server(settings.postgres_dir).cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    configured = Settings(postgres={"url": "postgresql://u:p@db.example:5432/x"})
    assert postgres_url(configured) == "postgresql://u:p@db.example:5432/x"


def test_cli_sink_runs_until_sigterm(kafka_env: str, pg_url: str, unique: str) -> None:
    items = [scored(f"cli-{unique}-{i}", i) for i in range(3)]
    produce_scored(kafka_env, INTERACTIONS_SCORED.name, items)
    env = {
        **os.environ,
        "LEARNSTREAM_POSTGRES__URL": pg_url,
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_env,
        "LEARNSTREAM_METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "sink"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ids = [s.event_id for s in items]
    try:
        wait_for(
            lambda: proc.poll() is not None or count_rows(pg_url, ids) == len(ids),
            timeout=40,
            what="the CLI sink to write the rows",
        )
        assert proc.poll() is None, proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert count_rows(pg_url, ids) == len(ids)
    assert "telemetry sink stopped" in out
