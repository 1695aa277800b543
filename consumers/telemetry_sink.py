"""The PostgreSQL telemetry sink: ``interactions.scored`` -> ``telemetry_events``, by upsert.

A plain confluent-kafka consumer (group ``learnstream-sink``, manual commits) reads
`ScoredInteraction` records in batches of up to 500 and, per batch:

1. validates every value; an invalid one becomes a `DeadLetter` (stage ``sink``) for
   ``telemetry.dlq``, with its original bytes, so nothing read is ever dropped;
2. upserts the valid rows in one transaction, one statement: the batch travels as one JSON
   array parameter expanded by ``jsonb_to_recordset`` into ``INSERT ... ON CONFLICT (event_id)
   DO UPDATE`` (no temp tables, so it also works behind a transaction-pooling PgBouncer). The
   batch is first deduplicated by event id, and an update never replaces a later scoring with
   an earlier one (``WHERE scored_at <= EXCLUDED.scored_at``), so replays and at-least-once
   delivery never duplicate or regress a row;
3. if PostgreSQL refuses the batch for its data (a ``DataError``/``IntegrityError``, e.g. a NUL
   character), the rows are retried one by one, each in a savepoint, and only the refused ones
   are dead-lettered (error kind ``rejected``);
4. sends the batch's dead letters and waits for the broker to acknowledge them;
5. only then commits the batch's offsets, synchronously.

PostgreSQL unavailable (any other database error: connection refused or lost, server shutting
down, a missing table...): the same batch is retried with capped exponential backoff, each try
on a fresh connection (which re-applies pending migrations, cheaply), logging each failure;
nothing further is consumed and no offset is committed meanwhile. The consumer does not lose its
partitions during a long outage: its assigned partitions are *paused* and the wait between tries
is spent in ``consumer.poll()``, which returns no records for paused partitions but counts as
polling for ``max.poll.interval.ms`` and serves rebalance callbacks. Once the batch is written
the partitions are resumed and fetching continues right after the batch. (Simply sleeping would
get the consumer evicted after ``max.poll.interval.ms``; consuming without pausing would pile up
records in memory.) Broker problems while dead-lettering or committing are retried the same way.

Rebalances: a batch is normally written and committed before the next ``consume()``, so at a
revocation nothing is in flight. During an outage wait a revocation may arrive with a batch in
hand: the sink tries once more to write and commit it; if that fails too, it forgets the revoked
partitions' records (their offsets were not committed, so the new owner reads them again; the
upsert makes that harmless). Lost partitions are forgotten without committing. A failed commit
after a successful write is logged and not fatal, for the same reason.

This module is the process loop; the rows and the SQL (record validation, row mapping, the
upsert statement and how it runs) live in `consumers.sink_rows`, and are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Unpack

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from consumers.base import (
    DLQ_KEEP_BYTES,  # noqa: F401 (also the sink's public name)
    ConsumerMetrics,
    ConsumerOptions,
    KafkaConsumerProcess,
    Partition,
    consumer_process,
    describe,
    drop_partitions,
    partition_set,
)
from consumers.sink_rows import (  # noqa: F401 (the rows and SQL, also public here)
    COLUMN_NAMES,
    COLUMNS,
    STAGE,
    UPSERT_SQL,
    Item,
    SinkRow,
    batch_document,
    commit_positions,
    dead_letter,
    dedupe_rows,
    is_data_error,
    parse_record,
    reject_items,
    row_from_scored,
    row_json,
    rows_to_write,
    upsert_batch,
    upsert_rows_one_by_one,
)
from schemas.headers import dead_letter_headers
from schemas.topics import INTERACTIONS_SCORED

if TYPE_CHECKING:
    import psycopg
    from confluent_kafka import Message, TopicPartition

    from learnstream.core.settings import Settings

log = logging.getLogger("learnstream.sink")

DEFAULT_GROUP = "learnstream-sink"
DEFAULT_BATCH_SIZE = 500


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkMetrics(ConsumerMetrics):
    """The sink's Prometheus metrics on one registry."""

    rows_written: Counter
    batches: Counter
    batch_seconds: Histogram
    db_errors: Counter
    invalid: Counter
    db_up: Gauge
    lag: Gauge

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> SinkMetrics:
        p = "learnstream_sink_"
        return cls(
            registry=registry,
            rows_written=Counter(
                p + "rows_written",
                "Rows inserted or updated in telemetry_events",
                registry=registry,
            ),
            batches=Counter(p + "batches", "Batches written and committed", registry=registry),
            batch_seconds=Histogram(
                p + "batch_seconds",
                "Seconds from a batch's arrival to its offset commit (retries included)",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                registry=registry,
            ),
            db_errors=Counter(
                p + "db_errors",
                "Failed attempts to reach or write to PostgreSQL (each is retried)",
                registry=registry,
            ),
            invalid=Counter(
                p + "invalid",
                "Records sent to telemetry.dlq: invalid (not a ScoredInteraction) or rejected "
                "(refused by PostgreSQL)",
                ["reason"],
                registry=registry,
            ),
            commit_errors=Counter(
                p + "commit_errors",
                "Offset commits that failed after the batch was written (re-read, no duplicate)",
                registry=registry,
            ),
            db_up=Gauge(
                p + "db_up", "1 when the last PostgreSQL write succeeded, else 0", registry=registry
            ),
            rebalances=Counter(
                p + "rebalances",
                "Partition assignments, revocations and losses seen by the sink",
                ["kind"],
                registry=registry,
            ),
            lag=Gauge(
                p + "lag",
                "Records behind the end of the assigned partitions (sum), as of the last batch",
                registry=registry,
            ),
        )


# --- the sink --------------------------------------------------------------------------------


class RetryableError(Exception):
    """A failure of PostgreSQL (``kind`` "db") or the broker ("kafka") worth retrying for."""

    def __init__(self, message: str, kind: str = "db") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Batch:
    """A consumed batch that is not committed yet, and how far it got."""

    items: list[Item]
    started: float = field(default_factory=time.monotonic)
    written: bool = False
    letters_sent: bool = False

    def drop_partitions(self, partitions: set[Partition]) -> int:
        """Forget the records of ``partitions``; how many were dropped."""
        return drop_partitions(self.items, partitions)


class TelemetrySink(KafkaConsumerProcess[SinkMetrics]):
    """Consumes ``interactions.scored`` and upserts it into PostgreSQL (see the module docs).

    Call `run` (blocks until ``stop`` is set) or, step by step, `start` then `run_once`, and
    `close` at the end. ``options`` are those of every consumer (`ConsumerOptions`: dead-letter
    topic, poll timeout, backoff, librdkafka properties, stop event).
    """

    name = "sink"

    def __init__(
        self,
        settings: Settings,
        *,
        postgres_url: str | None = None,
        group_id: str = DEFAULT_GROUP,
        topic: str = INTERACTIONS_SCORED.name,
        batch_size: int = DEFAULT_BATCH_SIZE,
        registry: CollectorRegistry | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        from learnstream.postgres import postgres_url as configured_url

        super().__init__(
            settings,
            metrics=SinkMetrics.on(registry or CollectorRegistry()),
            log=log,
            group_id=group_id,
            topic=topic,
            batch_size=batch_size,
            **options,
        )
        self.url = postgres_url or configured_url(settings)
        self._conn: psycopg.Connection[Any] | None = None
        self._inflight: Batch | None = None
        self._held: list[Message] = []  # records that arrived while paused (kept for next batch)
        self._lag_checked = 0.0

    # -- lifecycle --

    def start(self) -> bool:
        """Connect to PostgreSQL (applying migrations; retried until it works) and subscribe.

        Returns False when ``stop`` was set before PostgreSQL could be reached.
        """
        if not self._retry(self._connection, "connect to PostgreSQL", heartbeat=False):
            return False
        return super().start()

    def close(self) -> None:
        """Leave the group, flush the dead-letter producer, close the database connection."""
        if self._inflight is not None and self._inflight.items:
            log.warning(
                "stopping with %d records not committed; they will be read again",
                len(self._inflight.items),
            )
        self._inflight = None  # stopping: the final revoke must not retry the write
        super().close()
        self._drop_connection()

    # -- one batch --

    def run_once(self) -> int:
        """Consume one batch and write, dead-letter and commit it (retrying while needed).

        Returns the number of records committed (0 when nothing came, or ``stop`` was set
        before the batch could be written; that batch is then read again by the next run).
        """
        want = self.batch_size - len(self._held)
        # consume() runs the rebalance callbacks, which drop held records of revoked
        # partitions: take the held ones only after it.
        fresh = (
            self.consumer.consume(num_messages=want, timeout=self.poll_timeout) if want > 0 else []
        )
        messages, self._held = [*self._held, *fresh], []
        items = self._items(messages)
        batch = Batch(items)
        if items:
            self._inflight = batch
            if not self._retry(self._flush_inflight, "write batch", heartbeat=True):
                return 0
        self._update_lag()
        return len(batch.items)  # less any records handed back at a revocation

    def _items(self, messages: Iterable[Message]) -> list[Item]:
        return [
            parse_record(r.value, r.key, topic=r.topic, partition=r.partition, offset=r.offset)
            for r in self._records(messages)
        ]

    def _flush_inflight(self) -> None:
        """Write, dead-letter and commit the in-flight batch; raise RetryableError to retry."""
        batch = self._inflight
        if batch is None:
            return
        if not batch.items:  # every record went back to the group with a revocation
            self._inflight = None
            return
        if not batch.written:
            rows = rows_to_write(batch.items)
            if rows:
                reject_items(batch.items, self._write(rows))
            batch.written = True
        if not batch.letters_sent:
            self._send_letters([i for i in batch.items if i.letter is not None])
            batch.letters_sent = True
        self._commit(batch.items)
        letters = sum(1 for i in batch.items if i.letter is not None)
        self.summary.add(read=len(batch.items), stored=len(batch.items) - letters)
        self.summary.add(dead_letters=letters)
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.monotonic() - batch.started)
        self._inflight = None

    # -- PostgreSQL --

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (pending migrations applied)."""
        import psycopg

        from consumers.migrate import migrate
        from learnstream.postgres import connect

        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = connect(self.url, application_name="learnstream-sink")
        except psycopg.Error as exc:
            raise RetryableError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            migrate(conn)
        except Exception as exc:
            conn.close()
            raise RetryableError(f"cannot apply migrations: {exc}") from exc
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                self._conn.close()
            self._conn = None

    def _write(self, rows: list[tuple[SinkRow, str]]) -> list[tuple[SinkRow, Exception]]:
        """Upsert ``rows`` (each with its `row_json`) in one transaction.

        Returns the rows PostgreSQL refused for their data (the others are written); raises
        RetryableError for every other database failure (nothing is written then).
        """
        import psycopg

        conn = self._connection()
        try:
            written = upsert_batch(conn, [text for _, text in rows])
            self.metrics.rows_written.inc(written)
            self.metrics.db_up.set(1)
            return []
        except psycopg.Error as exc:
            if not is_data_error(exc):
                self._drop_connection()
                raise RetryableError(f"PostgreSQL write failed: {exc}") from exc
            log.warning("PostgreSQL refused the batch (%s); writing its rows one by one", exc)
        try:
            written, rejected = upsert_rows_one_by_one(conn, rows)
        except psycopg.Error as exc:
            self._drop_connection()
            raise RetryableError(f"PostgreSQL write failed: {exc}") from exc
        self.metrics.rows_written.inc(written)
        self.metrics.db_up.set(1)
        for row, error in rejected:
            log.error("PostgreSQL refused event %s: %s (dead-lettered)", row["event_id"], error)
        return rejected

    # -- Kafka --

    def _send_letters(self, items: list[Item]) -> None:
        """Produce the dead letters and wait until the broker has every one."""
        if not items:
            return
        producer = self.producer
        failures: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(err.str())

        for item in items:
            assert item.letter is not None
            letter = item.letter
            key = item.key or str(uuid.uuid5(uuid.NAMESPACE_URL, letter.original_b64)).encode()
            try:
                producer.produce(
                    self.dlq_topic,
                    value=letter.model_dump_json().encode(),
                    key=key,
                    headers=[*dead_letter_headers(letter)],
                    on_delivery=on_delivery,
                )
            except BufferError as exc:
                producer.flush(5)
                raise RetryableError(f"dead-letter queue full: {exc}", "kafka") from exc
        pending = producer.flush(30)
        if pending or failures:
            raise RetryableError(
                f"dead letters not delivered ({pending} pending, {len(failures)} failed: "
                f"{'; '.join(failures[:3])})",
                "kafka",
            )
        for item in items:
            assert item.letter is not None
            self.metrics.invalid.labels(item.letter.error_kind).inc()
            log.warning(
                "dead-lettered %s[%d]@%d: %s",
                item.topic,
                item.partition,
                item.offset,
                item.letter.error[:300],
            )

    def _commit(self, items: list[Item]) -> None:
        """Commit the offsets after ``items`` synchronously; only broker hiccups raise."""
        from confluent_kafka import KafkaException

        try:
            self._commit_offsets(commit_positions(items), "the batch", raise_retriable=True)
        except KafkaException as exc:
            raise RetryableError(f"offset commit failed: {exc.args[0]}", "kafka") from exc

    def _arrived_paused(self, msg: Message) -> None:
        if msg.error() is None:
            self._held.append(msg)  # not expected while paused; kept for the next batch

    def _retry(self, action: Callable[[], object], what: str, *, heartbeat: bool) -> bool:
        """Run ``action`` until it stops raising RetryableError, backing off between tries.

        With ``heartbeat`` the waits keep the consumer in its group (paused partitions).
        False when ``stop`` was set first.
        """
        delays = self._delays()
        failures = 0
        with self._resuming():
            while True:
                try:
                    action()
                    if failures:
                        log.info("%s: succeeded after %d failed attempts", what, failures)
                    return True
                except RetryableError as exc:
                    failures += 1
                    delay = next(delays)
                    if exc.kind == "db":
                        self.metrics.db_errors.inc()
                        self.metrics.db_up.set(0)
                    log.warning(
                        "%s failed (attempt %d): %s; retrying in %.1fs", what, failures, exc, delay
                    )
                    waited = self._keepalive(delay) if heartbeat else not self.stop.wait(delay)
                    if not waited:
                        return False

    # -- rebalance callbacks (run inside consume/poll) --

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", describe(partitions))
        revoked = partition_set(partitions)
        # Records that arrived while paused were never written: the next owner reads them.
        self._drop_held(revoked)
        batch = self._inflight
        if batch is None or not batch.items:
            return
        try:
            self._flush_inflight()  # one more try while the partitions are still ours
            log.info("in-flight batch written and committed before the revocation")
        except RetryableError as exc:
            dropped = batch.drop_partitions(revoked)
            log.warning(
                "revoked with a batch in flight (%s): %d records left to the next owner",
                exc,
                dropped,
            )

    def _forget(self, partitions: set[Partition]) -> int:
        dropped = 0 if self._inflight is None else self._inflight.drop_partitions(partitions)
        return dropped + self._drop_held(partitions)

    def _drop_held(self, partitions: set[Partition]) -> int:
        held = len(self._held)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in partitions]
        return held - len(self._held)

    # -- lag --

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        try:
            assignment = self.consumer.assignment()
            if not assignment:
                self.metrics.lag.set(0)
                return
            total = 0
            for tp in self.consumer.position(assignment):
                if tp.offset < 0:
                    continue
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    total += max(high - tp.offset, 0)
            self.metrics.lag.set(total)
            self.summary.gauge(partitions=len(assignment), lag=total)
        except Exception as exc:  # lag is informational only
            log.debug("lag not available: %s", exc)


# --- the process -----------------------------------------------------------------------------


def run_sink(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> None:
    """Run the telemetry sink until SIGINT/SIGTERM (main thread) or ``stop`` is set.

    Applies the migrations at start (waiting for PostgreSQL if it is not up yet), serves the
    metrics on ``LEARNSTREAM_METRICS_PORT`` (default registry unless one is given) and returns
    normally after a clean stop: every written batch is committed, an unwritten one is read
    again by the next run. ``options`` go to `TelemetrySink`.
    """
    from learnstream.core.metrics import serve_metrics
    from learnstream.postgres import postgres_url, redact

    with consumer_process(settings, log, stop) as stop_event:
        registry = registry or REGISTRY
        url = options.pop("postgres_url", None) or postgres_url(settings)
        sink = TelemetrySink(
            settings, postgres_url=url, registry=registry, stop=stop_event, **options
        )
        serve_metrics(settings, registry)
        log.info("telemetry sink: PostgreSQL %s", redact(url))
        sink.run()
        log.info("telemetry sink stopped")
