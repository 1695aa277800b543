"""What the pipeline's confluent-kafka consumer processes (the sink, the trainer) share.

`KafkaConsumerProcess` is a manually committing consumer in a group, with the lifecycle both
processes follow: created on first use from `learnstream.core.kafka.consumer_config`, subscribed
with rebalance callbacks (counted in a ``rebalances`` metric), `run` until ``stop`` is set, then
closed. Long work (a database outage, a training job, a failing delivery) is done with every
assigned partition *paused* while ``consumer.poll()`` keeps being called: polling is what counts
for ``max.poll.interval.ms`` and serves the rebalance callbacks, and paused partitions return no
records. Offsets are committed synchronously, only by the subclass and only once its work is
durable; on a revocation or loss the subclass forgets (a revocation: or first finishes) its
uncommitted records of those partitions, so their next owner reads them again (at-least-once).

Also here: the set-up of a consumer process (`consumer_process`). Dead letters are built with
`schemas.dlq.DeadLetter.from_bytes` and their headers come from `schemas.headers`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypedDict, TypeVar

from learnstream.core.metrics import MetricSet
from learnstream.core.summary import Summary
from schemas.dlq import DEAD_LETTER_MAX_BYTES
from schemas.topics import DLQ

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, Producer, TopicPartition
    from prometheus_client import CollectorRegistry, Counter

    from learnstream.core.settings import Settings

DLQ_KEEP_BYTES = DEAD_LETTER_MAX_BYTES  # the one cap of every dead letter (schemas.dlq)

Partition = tuple[str, int]
"""A (topic, partition) pair."""

Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka takes them."""


# --- records and partitions ------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Placed(Protocol):
    """Anything read from a partition: a `Record`, or what a consumer makes of one."""

    @property
    def topic(self) -> str:
        """The topic it was read from."""
        ...

    @property
    def partition(self) -> int:
        """The partition it was read from."""
        ...


T = TypeVar("T", bound=Placed)


def drop_partitions(items: list[T], partitions: set[Partition]) -> int:
    """Remove the items read from ``partitions`` from ``items`` (in place); how many."""
    keep = [i for i in items if (i.topic, i.partition) not in partitions]
    dropped = len(items) - len(keep)
    items[:] = keep
    return dropped


def partition_set(partitions: Iterable[TopicPartition]) -> set[Partition]:
    """The (topic, partition) pairs of ``partitions``."""
    return {(p.topic, p.partition) for p in partitions}


def describe(partitions: Iterable[TopicPartition]) -> str:
    """``topic[partition]`` of each of ``partitions``, for the log."""
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions)


# --- dead letters ----------------------------------------------------------------------------


# --- the consumer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerMetrics(MetricSet):
    """The Prometheus metrics every consumer process has, on one registry.

    A subclass adds its own and builds them all, with its names and help texts, in `_create`.
    """

    registry: CollectorRegistry
    commit_errors: Counter  # offset commits that failed
    rebalances: Counter  # rebalance callbacks, by kind: assign, revoke, lost


M = TypeVar("M", bound=ConsumerMetrics)


class ConsumerOptions(TypedDict, total=False):
    """The settings every consumer process takes (defaults in `KafkaConsumerProcess`)."""

    dlq_topic: str
    poll_timeout: float
    backoff_initial: float
    backoff_max: float
    consumer_config: dict[str, Any] | None
    stop: threading.Event | None
    consumer: Consumer | None
    producer: Producer | None


class KafkaConsumerProcess(abc.ABC, Generic[M]):
    """A manually committing consumer of ``topic`` in ``group_id`` (see the module docs).

    Call `run` (blocks until ``stop`` is set) or `start`, `run_once`... and `close`. A subclass
    does its work in `run_once`, commits with `_commit_offsets` and forgets the records of
    partitions it no longer owns in `_forget`.

    ``consumer_config`` adds or overrides librdkafka consumer properties; failed attempts are
    retried after ``backoff_initial`` seconds, doubling up to ``backoff_max``; ``stop`` ends
    `run` (and any retrying). ``consumer`` and ``producer`` are the Kafka clients to use
    instead of creating them from the settings on first use (tests pass fakes; tests/fakes.py).
    """

    name: ClassVar[str]
    """The process's name in the log."""
    producer_overrides: ClassVar[dict[str, Any]] = {}
    """librdkafka properties of `producer` beyond `reliable_producer_config`."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: M,
        log: logging.Logger,
        group_id: str,
        topic: str,
        batch_size: int,
        dlq_topic: str = DLQ.name,
        poll_timeout: float = 1.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        consumer_config: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.group_id = group_id
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop = stop or threading.Event()
        self._consumer_config = consumer_config or {}
        self._consumer: Consumer | None = consumer
        self._producer: Producer | None = producer
        self._paused = False
        self.summary = Summary(log, self.name, settings.summary_interval_s)

    # -- lifecycle --

    @property
    def consumer(self) -> Consumer:
        """The Kafka consumer (created on first use)."""
        if self._consumer is None:
            from confluent_kafka import Consumer

            from learnstream.core.kafka import consumer_config

            conf = consumer_config(self.settings, self.group_id, **self._consumer_config)
            self._consumer = Consumer(conf, logger=self.log)
        return self._consumer

    @property
    def producer(self) -> Producer:
        """The producer of dead letters and other output (created on first use)."""
        if self._producer is None:
            from confluent_kafka import Producer

            from learnstream.core.kafka import reliable_producer_config

            conf = reliable_producer_config(self.settings, **self.producer_overrides)
            self._producer = Producer(conf, logger=self.log)
        return self._producer

    def start(self) -> bool:
        """Subscribe to the topic; False when the process should not run (stopped first)."""
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info("%s subscribed to %s as group %s", self.name, self.topic, self.group_id)
        return True

    def run(self) -> None:
        """Start, then `run_once` until ``stop`` is set; then close."""
        try:
            if not self.start():
                return
            while not self.stop.is_set():
                self.run_once()
                self.summary.maybe_log()
        finally:
            self.close()

    @abc.abstractmethod
    def run_once(self) -> int:
        """Consume once and do the work; how many records were committed."""

    def close(self) -> None:
        """Leave the group and flush the producer."""
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError):  # already closed
                self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consuming and committing --

    def _records(self, messages: Iterable[Message]) -> list[Record]:
        """The records among ``messages``; errors are skipped (logged), a fatal one raises."""
        from confluent_kafka import KafkaError, KafkaException

        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    self.log.warning("consumer error: %s", err.str())
                continue
            records.append(
                Record(
                    str(msg.topic()),
                    int(msg.partition() or 0),
                    int(msg.offset() or 0),
                    msg.key(),
                    msg.value(),
                )
            )
        return records

    def _commit_offsets(
        self, positions: Mapping[Partition, int], what: str, *, raise_retriable: bool = False
    ) -> bool:
        """Commit ``positions`` (the next offset to read, per partition) synchronously.

        A failure is counted and logged, not raised: ``what`` is read again (at-least-once).
        With ``raise_retriable`` a retriable KafkaException is raised instead. Returns whether
        every position was committed.
        """
        from confluent_kafka import KafkaException, TopicPartition

        if not positions:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if (
                raise_retriable
                and err is not None
                and hasattr(err, "retriable")
                and err.retriable()
            ):
                raise
            self.metrics.commit_errors.inc()
            self.log.warning("offset commit failed (%s); %s will be read again", exc, what)
            return False
        committed = True
        for tp in result or []:
            if tp.error is not None:
                committed = False
                self.metrics.commit_errors.inc()
                self.log.warning(
                    "offset commit for %s[%d] failed: %s", tp.topic, tp.partition, tp.error
                )
        return committed

    # -- pausing while working --

    def _pause(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        self._paused = True

    def _resume(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self._paused = False

    @contextlib.contextmanager
    def _resuming(self) -> Iterator[None]:
        """Resume the partitions at the end if anything inside paused them."""
        try:
            yield
        finally:
            if self._paused:
                self._resume()

    def _poll_paused(self, timeout: float) -> None:
        """One ``poll()`` with every assigned partition paused (also ones assigned meanwhile).

        Keeps the group membership alive and serves rebalance callbacks. A record that still
        comes (fetched before the pause) goes to `_arrived_paused`, not lost.
        """
        self._pause()
        msg = self.consumer.poll(timeout)
        if msg is not None:
            self._arrived_paused(msg)

    @abc.abstractmethod
    def _arrived_paused(self, msg: Message) -> None:
        """Keep ``msg``, polled while paused, for later."""

    def _keepalive(self, seconds: float) -> bool:
        """Poll the paused consumer for ``seconds``; False when ``stop`` was set meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._poll_paused(min(remaining, 0.5))
        return False

    def _delays(self) -> Iterator[float]:
        """The waits between retries: capped exponential backoff, endless."""
        delay = self.backoff_initial
        while True:
            yield delay
            delay = min(delay * 2, self.backoff_max)

    # -- rebalance callbacks (run inside consume/poll) --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self.log.info("assigned %s", describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        self._revoked(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        self.log.warning("lost %s", describe(partitions))
        self._forget(partition_set(partitions))

    @abc.abstractmethod
    def _revoked(self, partitions: list[TopicPartition]) -> None:
        """Hand ``partitions`` back to the group (log, then finish or forget their records)."""

    @abc.abstractmethod
    def _forget(self, partitions: set[Partition]) -> int:
        """Drop the uncommitted records of ``partitions`` (no longer ours); how many."""


# --- the process -----------------------------------------------------------------------------


@contextlib.contextmanager
def consumer_process(
    settings: Settings, log: logging.Logger, stop: threading.Event | None = None
) -> Iterator[threading.Event]:
    """Set up a consumer process; yields its stop event (see
    `learnstream.core.signals.process_lifecycle`)."""
    from learnstream.core.signals import process_lifecycle

    with process_lifecycle(settings, log, stop) as stop_event:
        yield stop_event
