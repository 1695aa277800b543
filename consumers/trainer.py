"""The trainer consumer: ``training.triggers`` -> training job -> ``training.results``.

A plain confluent-kafka consumer (group ``learnstream-trainer``, manual commits) reads
`TrainingTrigger` records and handles them one at a time, in order:

1. an invalid value becomes a `DeadLetter` (stage ``trainer``) on ``telemetry.dlq``, with its
   original bytes and the reason; once the broker has it, the offset is committed;
2. a trigger whose job record (``AdapterStore.read_job``) says it is done is a duplicate:
   nothing is trained; its *stored* result is published again (header ``duplicate: 1``) and
   the offset committed. Republishing rather than skipping makes ``training.results``
   at-least-once: a previous owner may have finished the job but died (or lost the partition)
   before publishing. Readers of ``training.results`` recognize repeats by ``trigger_id``;
3. otherwise `trainers.pipeline.run_training_job` runs in a worker thread (it never raises,
   is idempotent per ``trigger_id`` and holds a per-base-model file lock, so a trigger for a
   base model whose job is running elsewhere waits for it). Meanwhile the main thread keeps
   calling ``consumer.poll()`` with the assigned partitions *paused*: a job of an hour neither
   gets the consumer evicted after ``max.poll.interval.ms`` (polling is what counts) nor reads
   further triggers (paused partitions return no records), and rebalance callbacks are served.
   Then the `TrainingResult` goes to ``training.results`` (key: the base model; headers
   ``source``, ``event_type``, ``schema_version``, ``content-type``), the trainer waits for
   the broker's acknowledgement, resumes the partitions and commits the trigger's offset.

One job at a time: ``training.triggers`` has one partition, and the records of a batch are
handled sequentially. A trigger arriving while a job runs stays unread until the job is over,
then is handled like any other (a repeat of the running trigger is then a duplicate).

Rebalances: a revocation during a job does not stop the job (training cannot be handed over
half done). Its result is recorded durably in the pipeline's job record, so the partition's new
owner, reading the uncommitted trigger again, finds the job done and only republishes the
result (if the new owner reads it while the job still runs on the same adapter store, the job
lock makes it wait, then it gets the stored result). So when the job ends and the trigger's
partition is no longer assigned here, this consumer neither publishes nor commits. When the
partition was revoked and assigned back meanwhile, it publishes and commits as usual, and skips
the re-read of what it has already committed. The adapter store folder must therefore be shared
by every trainer of a group (the same volume), or a revoked job could train twice.

Broker problems while publishing a result or a dead letter are retried with capped exponential
backoff, the partitions paused and polled. On stop, a pending delivery is abandoned and the
offset not committed: the next run reads the trigger again and republishes the stored result.

SIGINT/SIGTERM (or ``stop``) while idle stop at once; during a job the trainer logs that it is
waiting and stops once the job's result is published and committed. A second signal gets the
default behaviour (SIGINT: KeyboardInterrupt), abandoning the job; a job interrupted that way
runs again (or resumes at its decision) when the trigger is read again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from consumers.base import (
    ConsumerMetrics,
    ConsumerOptions,
    Headers,
    KafkaConsumerProcess,
    Partition,
    Record,
    consumer_process,
    describe,
    drop_partitions,
    partition_set,
)
from schemas.base import utcnow
from schemas.dlq import DeadLetter
from schemas.headers import dead_letter_headers, json_headers
from schemas.topics import TRAINING_RESULTS, TRAINING_TRIGGERS
from schemas.training import TrainingResult, TrainingTrigger

if TYPE_CHECKING:
    from confluent_kafka import Message, TopicPartition

    from learnstream.core.settings import Settings
    from trainers.adapters import JobRecord
    from trainers.metrics import TrainingMetrics

log = logging.getLogger("learnstream.trainer")

STAGE = "trainer"
DEFAULT_GROUP = "learnstream-trainer"
PROGRESS_EVERY_S = 10.0


class JobRunner(Protocol):
    """The signature of `trainers.pipeline.run_training_job` as the trainer calls it."""

    def __call__(
        self,
        settings: Settings,
        trigger: TrainingTrigger,
        *,
        metrics: TrainingMetrics | None = ...,
        on_progress: Callable[[int, int, float | None], None] | None = ...,
    ) -> TrainingResult:
        """Run the job of ``trigger``; never raises."""
        ...


# --- pure functions --------------------------------------------------------------------------


def parse_trigger(record: Record) -> TrainingTrigger | DeadLetter:
    """The record's `TrainingTrigger`, or the stage-``trainer`` dead letter saying why not.

    A dead letter keeps the whole value, or its first ``DLQ_KEEP_BYTES`` (``original_size``
    then tells the full size).
    """
    if record.value is None:
        error = "empty record value (a tombstone?)"
    else:
        try:
            return TrainingTrigger.model_validate_json(record.value)
        except ValidationError as exc:
            error = f"not a valid TrainingTrigger: {exc}"
    return DeadLetter.from_bytes(
        record.value or b"",
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        event_type="training_trigger",
        stage=STAGE,
        error=error,
    )


def stored_result(record: JobRecord | None) -> TrainingResult | None:
    """The result to republish for a duplicate trigger, or None when the job must run.

    Only a finished job (state ``done`` with a result) is a duplicate. A job that is
    ``running`` or ``registered`` either runs in another process (the pipeline's job lock makes
    this one wait for it, then returns its stored result) or crashed (the pipeline resumes it),
    so both go to `run_training_job`, which never trains a finished trigger twice.
    """
    if record is None or record.state != "done" or record.result is None:
        return None
    return record.training_result()


def result_headers(result: TrainingResult, *, duplicate: bool = False) -> Headers:
    """The headers of a ``training.results`` record (``duplicate: 1`` on a republished one)."""
    headers: Headers = [*json_headers(STAGE, "training_result", result.schema_version)]
    if duplicate:
        headers.append(("duplicate", b"1"))
    return headers


def describe_result(result: TrainingResult) -> str:
    """A one-line summary of a result for the log: status and reason, then the numbers."""
    parts: list[str] = []
    if result.candidate_version is not None:
        parts.append(f"candidate v{result.candidate_version:04d}")
    parts.append(
        "active: base model"
        if result.active_version is None
        else f"active v{result.active_version:04d}"
    )
    for name in ("eval_loss_active", "eval_loss_candidate", "relative_improvement"):
        if name in result.metrics:
            parts.append(f"{name}={result.metrics[name]:.4g}")
    total = result.durations_s.get("total")
    if total is not None:
        parts.append(f"{total:.1f}s")
    head = result.reason
    if not head.startswith(result.status):
        head = f"{result.status}: {head}"
    return f"{head} ({', '.join(parts)})"


class ProgressLog:
    """An ``on_progress`` callback logging a job's training steps at most every ``every`` s."""

    def __init__(
        self,
        trigger_id: str,
        *,
        every: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trigger_id = trigger_id
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self.lines = 0

    def __call__(self, step: int, max_steps: int, loss: float | None) -> None:
        """Log ``step/max_steps`` and the loss unless a line was logged less than ``every`` ago."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        self.lines += 1
        shown = "n/a" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"
        log.info("training job %s: step %d/%d, loss %s", self.trigger_id, step, max_steps, shown)


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerMetrics(ConsumerMetrics):
    """The trainer consumer's Prometheus metrics on one registry."""

    triggers: Counter
    invalid: Counter
    duplicates: Counter
    jobs_running: Gauge
    results: Counter
    delivery_errors: Counter

    @classmethod
    def _create(cls, r: CollectorRegistry) -> TrainerMetrics:
        p = "learnstream_trainer_"
        return cls(
            registry=r,
            triggers=Counter(
                p + "triggers_consumed", "training.triggers records consumed", registry=r
            ),
            invalid=Counter(p + "triggers_invalid", "Invalid triggers dead-lettered", registry=r),
            duplicates=Counter(
                p + "duplicates",
                "Triggers whose job was already done (stored result republished, no training)",
                registry=r,
            ),
            jobs_running=Gauge(p + "jobs_running", "Training jobs running now", registry=r),
            results=Counter(
                p + "results_published",
                "TrainingResults published to training.results",
                ["status"],
                registry=r,
            ),
            delivery_errors=Counter(
                p + "delivery_errors",
                "Failed attempts to publish a result or dead letter (each is retried)",
                registry=r,
            ),
            commit_errors=Counter(
                p + "commit_errors",
                "Offset commits that failed (the trigger is read again: a duplicate)",
                registry=r,
            ),
            rebalances=Counter(
                p + "rebalances",
                "Partition assignments, revocations and losses",
                ["kind"],
                registry=r,
            ),
        )


# --- the consumer ----------------------------------------------------------------------------


class TrainerConsumer(KafkaConsumerProcess[TrainerMetrics]):
    """Consumes ``training.triggers`` and runs their training jobs (see the module docs).

    Call `run` (blocks until ``stop`` is set) or `start`, `run_once`... and `close`.
    ``job_runner`` replaces `run_training_job` (tests); ``options`` are those of every consumer
    (`ConsumerOptions`: dead-letter topic, poll timeout, backoff, librdkafka properties, stop).
    """

    name = "trainer"
    producer_overrides = {"message.timeout.ms": 60_000}

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = DEFAULT_GROUP,
        topic: str = TRAINING_TRIGGERS.name,
        results_topic: str = TRAINING_RESULTS.name,
        batch_size: int = 10,
        progress_every: float = PROGRESS_EVERY_S,
        registry: CollectorRegistry | None = None,
        job_runner: JobRunner | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        from trainers.metrics import TrainingMetrics

        registry = registry or CollectorRegistry()
        super().__init__(
            settings,
            metrics=TrainerMetrics.on(registry),
            log=log,
            group_id=group_id,
            topic=topic,
            batch_size=batch_size,
            **options,
        )
        self.results_topic = results_topic
        self.progress_every = progress_every
        self.training_metrics = TrainingMetrics.on(registry)
        self.job_runner = job_runner
        self._pending: list[Record] = []  # consumed, not handled yet (in order)
        self._committed: dict[Partition, int] = {}  # offsets committed by this process
        self.job_thread: threading.Thread | None = None

    # -- lifecycle --

    def close(self) -> None:
        """Leave the group and flush the producer; unhandled triggers are read again later."""
        if self._pending:
            log.info(
                "stopping with %d triggers not handled; they will be read again",
                len(self._pending),
            )
            self._pending = []
        super().close()

    # -- triggers --

    def run_once(self) -> int:
        """Consume a batch (if none is pending) and handle its triggers one by one.

        Returns how many records were handled and committed. Stops early when ``stop`` is set
        (the rest is read again by the next run) or a trigger's partition was revoked.
        """
        if not self._pending:
            messages = self.consumer.consume(
                num_messages=self.batch_size, timeout=self.poll_timeout
            )
            self._pending.extend(self._records(messages))
        handled = 0
        while self._pending and not self.stop.is_set():
            record = self._pending.pop(0)
            with self._resuming():
                done = self.handle(record)
            if not done:
                # Not committed: later records of its partition must not be committed either.
                self._drop({(record.topic, record.partition)})
                continue
            handled += 1
        return handled

    def handle(self, record: Record) -> bool:
        """Handle one record: dead letter, duplicate or job; publish; commit.

        False when it was left uncommitted (stop during a delivery; partition revoked).
        """
        self.metrics.triggers.inc()
        parsed = parse_trigger(record)
        if isinstance(parsed, DeadLetter):
            if not self._deliver(
                self.dlq_topic,
                key=record.key,
                value=parsed.model_dump_json().encode(),
                headers=[*dead_letter_headers(parsed, STAGE)],
                what="dead letter",
            ):
                return False
            self.metrics.invalid.inc()
            log.warning(
                "dead-lettered %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                parsed.error[:300],
            )
            return self._commit(record)

        trigger = parsed
        result = self._stored(trigger)
        duplicate = result is not None
        if result is not None:
            self.metrics.duplicates.inc()
            log.info(
                "trigger %s (%s) already handled (%s): republishing its stored result, no training",
                trigger.trigger_id,
                trigger.base_model,
                result.status,
            )
        else:
            result = self._train(trigger)
            if not self._owns(record):
                log.warning(
                    "trigger %s: %s[%d] was revoked during the job; its result is in the job "
                    "record and the partition's new owner republishes it",
                    trigger.trigger_id,
                    record.topic,
                    record.partition,
                )
                return False
        if not self._deliver(
            self.results_topic,
            key=trigger.base_model.encode(),
            value=result.model_dump_json().encode(),
            headers=result_headers(result, duplicate=duplicate),
            what=f"result of trigger {trigger.trigger_id}",
        ):
            return False
        self.metrics.results.labels(result.status).inc()
        return self._commit(record)

    def _stored(self, trigger: TrainingTrigger) -> TrainingResult | None:
        """The stored result of a finished job of ``trigger``, else None."""
        from trainers.adapters import AdapterStore

        try:
            adapters = AdapterStore.for_settings(self.settings, trigger.base_model)
            return stored_result(adapters.read_job(trigger.trigger_id))
        except Exception as exc:  # unreadable record: the pipeline decides (and reports)
            log.warning("trigger %s: job record not readable (%s)", trigger.trigger_id, exc)
            return None

    def _train(self, trigger: TrainingTrigger) -> TrainingResult:
        """Run the job in a worker thread, polling the paused consumer until it ends."""
        runner = self.job_runner
        if runner is None:
            from trainers.pipeline import run_training_job

            runner = run_training_job
        box: list[TrainingResult] = []
        started_at = utcnow()

        def work() -> None:
            try:
                box.append(
                    runner(
                        self.settings,
                        trigger,
                        metrics=self.training_metrics,
                        on_progress=ProgressLog(trigger.trigger_id, every=self.progress_every),
                    )
                )
            except Exception as exc:  # run_training_job never raises; a replacement might
                log.exception("training job %s raised", trigger.trigger_id)
                box.append(
                    TrainingResult(
                        trigger_id=trigger.trigger_id,
                        base_model=trigger.base_model,
                        status="failed",
                        reason=f"{type(exc).__name__}: {exc}",
                        started_at=started_at,
                    )
                )

        log.info(
            "training job started: trigger %s, reasons %s, base model %s%s",
            trigger.trigger_id,
            ", ".join(str(r) for r in trigger.reasons),
            trigger.base_model,
            f" ({trigger.detail})" if trigger.detail else "",
        )
        thread = threading.Thread(target=work, name=f"training-{trigger.trigger_id}", daemon=True)
        self.job_thread = thread
        self.metrics.jobs_running.inc()
        try:
            thread.start()
            waiting_logged = False
            while thread.is_alive():
                if self.stop.is_set() and not waiting_logged:
                    log.info(
                        "stop requested: waiting for training job %s to finish",
                        trigger.trigger_id,
                    )
                    waiting_logged = True
                self._poll_paused(min(self.poll_timeout, 0.5))
                thread.join(0.05)
        finally:
            self.metrics.jobs_running.dec()
            self.job_thread = None
        result = box[0]
        log.info("training job %s finished: %s", trigger.trigger_id, describe_result(result))
        return result

    # -- Kafka --

    def _records(self, messages: Iterable[Message]) -> list[Record]:
        # A record re-read after a revoke + re-assign during a job may be committed already.
        return [
            r
            for r in super()._records(messages)
            if r.offset >= self._committed.get((r.topic, r.partition), -1)
        ]

    def _deliver(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        what: str,
    ) -> bool:
        """Produce one record and wait for the broker's acknowledgement, retrying failures.

        The consumer is polled, paused, meanwhile. False when ``stop`` was set before the
        record could be delivered.
        """
        from confluent_kafka import KafkaException

        delays = self._delays()
        failures = 0
        while True:
            outcome: list[str | None] = []

            def on_delivery(err: Any, msg: Any, outcome: list[str | None] = outcome) -> None:
                outcome.append(None if err is None else err.str())

            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
            except (BufferError, KafkaException) as exc:
                outcome.append(str(exc))
            while not outcome:
                self.producer.poll(0.1)
                self._poll_paused(0)
            if outcome[0] is None:
                if failures:
                    log.info("%s delivered after %d failed attempts", what, failures)
                return True
            failures += 1
            delay = next(delays)
            self.metrics.delivery_errors.inc()
            log.warning(
                "%s not delivered to %s (attempt %d): %s; retrying in %.1fs",
                what,
                topic,
                failures,
                outcome[0],
                delay,
            )
            if not self._keepalive(delay):
                log.warning("stopping: %s not delivered and its trigger not committed", what)
                return False

    def _commit(self, record: Record) -> bool:
        """Commit the offset after ``record`` synchronously; False when the broker refused.

        A refused commit (often a rebalance under way) stops the partition here: its later
        triggers are not trained on a partition that may be moving. The fetch goes back to
        just after ``record`` (its work is done and published), so they are read again; the
        next commit covers ``record`` too, or its next owner reads it again as a duplicate.
        """
        from confluent_kafka import KafkaException, TopicPartition

        tp = (record.topic, record.partition)
        if self._commit_offsets({tp: record.offset + 1}, "the trigger"):
            self._committed[tp] = max(self._committed.get(tp, -1), record.offset + 1)
            return True
        try:
            self.consumer.seek(TopicPartition(record.topic, record.partition, record.offset + 1))
        except KafkaException as exc:  # no longer assigned: the next owner reads it
            log.info("%s[%d] not re-read here: %s", record.topic, record.partition, exc)
        return False

    def _owns(self, record: Record) -> bool:
        try:
            assignment = self.consumer.assignment()
        except Exception:  # closed or failed consumer
            return False
        return any(
            (tp.topic, tp.partition) == (record.topic, record.partition) for tp in assignment
        )

    def _arrived_paused(self, msg: Message) -> None:
        self._pending.extend(self._records([msg]))

    def _drop(self, partitions: set[Partition]) -> int:
        return drop_partitions(self._pending, partitions)

    # -- rebalance callbacks (run inside consume/poll) --

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        dropped = self._forget(partition_set(partitions))
        log.info(
            "revoked %s%s%s",
            describe(partitions),
            f"; {dropped} unhandled triggers left to the next owner" if dropped else "",
            "; the running training job continues" if self.job_thread is not None else "",
        )

    def _forget(self, partitions: set[Partition]) -> int:
        dropped = self._drop(partitions)
        for tp in partitions:
            self._committed.pop(tp, None)  # the next owner's commits are not ours to judge
        return dropped


# --- the process -----------------------------------------------------------------------------


def run_trainer(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
    group_id: str = DEFAULT_GROUP,
    **options: Any,
) -> None:
    """Run the trainer consumer until SIGINT/SIGTERM (main thread) or ``stop`` is set.

    A stop request while a job runs takes effect once its result is published and committed;
    when idle, at once. Serves the metrics on ``LEARNSTREAM_METRICS_PORT`` (default registry
    unless one is given). ``group_id`` is the consumer group (as for `run_sink`); ``options`` go
    to `TrainerConsumer`
    (``topic``, ``results_topic``, ``dlq_topic``, ``poll_timeout``...).
    """
    from learnstream.core.metrics import serve_metrics

    with consumer_process(settings, log, stop) as stop_event:
        registry = registry or REGISTRY
        trainer = TrainerConsumer(
            settings, group_id=group_id, registry=registry, stop=stop_event, **options
        )
        serve_metrics(settings, registry)
        log.info(
            "trainer: default base model %s, adapter store %s",
            settings.base_model,
            settings.adapters_dir,
        )
        trainer.run()
        log.info("trainer stopped")
