"""The trainer consumer without a broker: parsing, duplicate decisions, headers, and the loop
(pause while a job runs, publish, then commit) against fake Kafka clients."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from consumers.telemetry_sink import DLQ_KEEP_BYTES
from consumers.trainer import (
    DEFAULT_GROUP,
    STAGE,
    ProgressLog,
    Record,
    TrainerConsumer,
    describe_result,
    parse_trigger,
    result_headers,
    run_trainer,
    stored_result,
)
from learnstream.core.settings import Settings, load_settings
from schemas.dlq import DeadLetter
from schemas.topics import DLQ, TRAINING_RESULTS, TRAINING_TRIGGERS
from schemas.training import TrainingResult, TrainingTrigger, TriggerReason
from tests.fakes import FakeConsumer, FakeMessage, FakeProducer, FakeTP
from trainers.adapters import AdapterStore, JobRecord

TOPIC = "training.triggers"
BASE = "org/tiny-model"


def trigger(trigger_id: str = "t-1", base_model: str = BASE) -> TrainingTrigger:
    return TrainingTrigger(
        trigger_id=trigger_id,
        base_model=base_model,
        reasons=[TriggerReason.LEARNINGS, TriggerReason.MANUAL],
        learnings_since_training=120,
    )


def result(trigger_id: str = "t-1", status: Any = "promoted") -> TrainingResult:
    return TrainingResult(
        trigger_id=trigger_id,
        base_model=BASE,
        status=status,
        reason="promoted: 12% lower eval loss",
        candidate_version=1,
        active_version=1,
        metrics={
            "eval_loss_active": 2.0,
            "eval_loss_candidate": 1.76,
            "relative_improvement": 0.12,
        },
        durations_s={"total": 3.5},
    )


def record(value: bytes | None, offset: int = 0, key: bytes | None = BASE.encode()) -> Record:
    return Record(TOPIC, 0, offset, key, value)


# --- pure parts ------------------------------------------------------------------------------


def test_parse_trigger_accepts_a_valid_trigger() -> None:
    t = trigger()
    parsed = parse_trigger(record(t.model_dump_json().encode(), offset=7))
    assert parsed == t


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "empty record value"),
        (b"not json", "not a valid TrainingTrigger"),
        (b'{"trigger_id": "x", "base_model": "m", "reasons": []}', "reasons"),
        (b'{"trigger_id": "x", "base_model": "m", "reasons": ["bogus"]}', "reasons"),
        (b'{"trigger_id": "", "base_model": "m", "reasons": ["manual"]}', "trigger_id"),
    ],
)
def test_parse_trigger_dead_letters_invalid_values(value: bytes | None, needle: str) -> None:
    letter = parse_trigger(record(value, offset=3, key=b"k"))
    assert isinstance(letter, DeadLetter)
    assert letter.stage == STAGE == "trainer"
    assert needle in letter.error
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 0, 3)
    assert letter.original() == (value or b"")
    assert letter.original_key_b64 is not None


def test_huge_invalid_values_keep_only_their_head() -> None:
    value = b"x" * (DLQ_KEEP_BYTES + 10)
    letter = parse_trigger(record(value))
    assert isinstance(letter, DeadLetter)
    assert len(letter.original()) == DLQ_KEEP_BYTES
    assert letter.original_size == DLQ_KEEP_BYTES + 10


def test_only_a_finished_job_is_a_duplicate() -> None:
    done = result()
    assert stored_result(None) is None
    assert stored_result(JobRecord("t-1", "running")) is None
    assert stored_result(JobRecord("t-1", "registered", candidate_version=1)) is None
    assert stored_result(JobRecord("t-1", "done", result=None)) is None
    record_ = JobRecord("t-1", "done", result=done.model_dump(mode="json"))
    assert stored_result(record_) == done


def test_result_headers() -> None:
    headers = dict(result_headers(result()))
    assert headers == {
        "source": b"trainer",
        "event_type": b"training_result",
        "schema_version": b"1",
        "content-type": b"application/json",
    }
    assert dict(result_headers(result(), duplicate=True))["duplicate"] == b"1"


def test_describe_result_names_versions_losses_and_reason() -> None:
    line = describe_result(result())
    assert line.startswith("promoted: 12% lower eval loss (candidate v0001, active v0001")
    assert "eval_loss_candidate=1.76" in line
    assert line.endswith(", 3.5s)")
    skipped = TrainingResult(trigger_id="t", base_model=BASE, status="skipped", reason="no data")
    assert describe_result(skipped) == "skipped: no data (active: base model)"


def test_progress_is_logged_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = ProgressLog("t-1", every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="learnstream.trainer"):
        for step in range(1, 31):
            progress(step, 30, 1.5)
            now[0] += 1.0
        now[0] -= 0.5
        progress(30, 30, 1.4)  # 9.5 s after the last line: not logged
        now[0] += 0.5
        progress(30, 30, None)
    assert progress.lines == 4  # steps 1, 11, 21, then the last call
    assert "training job t-1: step 1/30, loss 1.5000" in caplog.text
    assert "step 11/30" in caplog.text
    assert "step 21/30" in caplog.text
    assert "loss 1.4000" not in caplog.text
    assert "step 30/30, loss n/a" in caplog.text


# --- the loop against fake clients -----------------------------------------------------------


def message(offset: int, value: bytes | None, partition: int = 0) -> FakeMessage:
    """A training.triggers record keyed by the base model."""
    return FakeMessage(TOPIC, partition, offset, value, key=BASE.encode())


class FakeJob:
    """A job runner that blocks until released and counts its calls."""

    def __init__(self, outcome: TrainingResult | None = None) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.outcome = outcome

    def __call__(self, settings: Settings, trigger: TrainingTrigger, **kw: Any) -> TrainingResult:
        assert kw["metrics"] is not None
        kw["on_progress"](1, 2, 0.5)
        self.calls.append(trigger.trigger_id)
        self.started.set()
        assert self.release.wait(10), "the test never released the job"
        return self.outcome or result(trigger.trigger_id)


def settings_for(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", kafka={"bootstrap_servers": "127.0.0.1:1"})


def fake_trainer(
    tmp_path: Path, batches: list[list[FakeMessage]], job: FakeJob, *, fail: int = 0
) -> tuple[TrainerConsumer, FakeConsumer, FakeProducer, CollectorRegistry]:
    consumer = FakeConsumer(batches, assigned=[FakeTP(TOPIC, 0)])
    producer = FakeProducer(consumer.calls, fail)
    metrics = CollectorRegistry()
    trainer = TrainerConsumer(
        settings_for(tmp_path),
        registry=metrics,
        job_runner=job,
        poll_timeout=0.01,
        backoff_initial=0.01,
        backoff_max=0.02,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    return trainer, consumer, producer, metrics


def msg(t: TrainingTrigger, offset: int) -> FakeMessage:
    return message(offset, t.model_dump_json().encode())


def test_defaults_are_the_registered_topics_and_group(tmp_path: Path) -> None:
    trainer = TrainerConsumer(settings_for(tmp_path))
    assert trainer.group_id == DEFAULT_GROUP == "learnstream-trainer"
    assert trainer.topic == TRAINING_TRIGGERS.name
    assert trainer.results_topic == TRAINING_RESULTS.name
    assert trainer.dlq_topic == DLQ.name


def test_a_job_runs_paused_then_publishes_then_commits(tmp_path: Path) -> None:
    job = FakeJob()
    trainer, consumer, producer, metrics = fake_trainer(tmp_path, [[msg(trigger(), 5)]], job)
    running: list[float | None] = []

    def during_job() -> None:
        running.append(metrics.get_sample_value("learnstream_trainer_jobs_running"))
        assert not consumer.committed
        if len(running) == 3:
            job.release.set()

    consumer.on_poll = during_job
    assert trainer.run_once() == 1
    assert job.calls == ["t-1"]
    assert running[0] == 1.0
    calls = consumer.calls
    assert calls[:3] == ["consume", "pause", "poll"]
    produced = calls.index(f"produce {TRAINING_RESULTS.name}")
    assert produced < calls.index("commit") < calls.index("resume")
    assert consumer.committed == [(TOPIC, 0, 6)]
    assert not consumer.paused
    topic, key, value, headers = producer.sent[0]
    assert (topic, key) == (TRAINING_RESULTS.name, BASE.encode())
    published = TrainingResult.model_validate_json(value)
    assert published.model_dump(exclude={"started_at", "finished_at"}) == result().model_dump(
        exclude={"started_at", "finished_at"}
    )
    assert headers["event_type"] == b"training_result"
    assert "duplicate" not in headers
    assert metrics.get_sample_value("learnstream_trainer_jobs_running") == 0.0
    assert metrics.get_sample_value("learnstream_trainer_triggers_consumed_total") == 1.0
    published_total = "learnstream_trainer_results_published_total"
    assert metrics.get_sample_value(published_total, {"status": "promoted"}) == 1.0


def test_a_done_trigger_is_republished_without_training(tmp_path: Path) -> None:
    job = FakeJob()
    trainer, consumer, producer, metrics = fake_trainer(tmp_path, [[msg(trigger(), 0)]], job)
    done = result()
    registry = AdapterStore.for_settings(trainer.settings, BASE)
    registry.write_job(JobRecord("t-1", "done", result=done.model_dump(mode="json")))
    assert trainer.run_once() == 1
    assert job.calls == []
    topic, _, value, headers = producer.sent[0]
    assert topic == TRAINING_RESULTS.name
    assert json.loads(value) == done.model_dump(mode="json")
    assert headers["duplicate"] == b"1"
    assert consumer.committed == [(TOPIC, 0, 1)]
    assert metrics.get_sample_value("learnstream_trainer_duplicates_total") == 1.0


def test_an_unfinished_job_record_runs_the_job(tmp_path: Path) -> None:
    job = FakeJob()
    job.release.set()
    trainer, consumer, _, _ = fake_trainer(tmp_path, [[msg(trigger(), 0)]], job)
    registry = AdapterStore.for_settings(trainer.settings, BASE)
    registry.write_job(JobRecord("t-1", "registered", candidate_version=1))
    assert trainer.run_once() == 1
    assert job.calls == ["t-1"]
    assert consumer.committed == [(TOPIC, 0, 1)]


def test_invalid_values_are_dead_lettered_then_committed(tmp_path: Path) -> None:
    job = FakeJob()
    trainer, consumer, producer, metrics = fake_trainer(
        tmp_path, [[message(0, b"{oops"), message(1, None)]], job
    )
    assert trainer.run_once() == 2
    assert job.calls == []
    assert [s[0] for s in producer.sent] == [DLQ.name, DLQ.name]
    letter = DeadLetter.model_validate_json(producer.sent[0][2])
    assert letter.stage == "trainer"
    assert letter.original() == b"{oops"
    assert producer.sent[0][3]["event_type"] == b"dead_letter"
    assert consumer.committed == [(TOPIC, 0, 1), (TOPIC, 0, 2)]
    assert metrics.get_sample_value("learnstream_trainer_triggers_invalid_total") == 2.0


def test_stop_during_a_job_waits_for_it_and_leaves_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = FakeJob()
    batch = [msg(trigger("t-1"), 0), msg(trigger("t-2"), 1)]
    trainer, consumer, producer, _ = fake_trainer(tmp_path, [batch], job)
    polls = [0]

    def during_job() -> None:
        polls[0] += 1
        trainer.stop.set()
        if polls[0] == 3:
            job.release.set()

    consumer.on_poll = during_job
    with caplog.at_level(logging.INFO, logger="learnstream.trainer"):
        trainer.run()
    assert job.calls == ["t-1"]
    assert consumer.committed == [(TOPIC, 0, 1)]
    assert len(producer.sent) == 1
    assert "waiting for training job t-1 to finish" in caplog.text
    assert "1 triggers not handled" in caplog.text
    assert consumer.calls[-1] == "close"
    assert "training job started: trigger t-1, reasons learnings, manual" in caplog.text
    assert "training job t-1: step 1/2" in caplog.text
    assert "training job t-1 finished: promoted" in caplog.text


def test_stop_when_idle_returns_at_once(tmp_path: Path) -> None:
    trainer, consumer, _, _ = fake_trainer(tmp_path, [], FakeJob())
    trainer.stop.set()
    started = time.monotonic()
    trainer.run()
    assert time.monotonic() - started < 1
    assert consumer.calls == ["subscribe", "close"]


def test_revocation_during_a_job_leaves_publishing_to_the_next_owner(tmp_path: Path) -> None:
    job = FakeJob()
    batch = [msg(trigger("t-1"), 0), msg(trigger("t-2"), 1)]
    trainer, consumer, producer, _ = fake_trainer(tmp_path, [batch], job)

    def revoke() -> None:
        if consumer.assigned:
            consumer.assigned = []
            trainer._on_revoke(cast(Any, consumer), cast(Any, [FakeTP(TOPIC, 0)]))
            job.release.set()

    consumer.on_poll = revoke
    assert trainer.run_once() == 0
    assert job.calls == ["t-1"]  # the job finished
    assert producer.sent == []  # ... but the next owner republishes its stored result
    assert consumer.committed == []
    assert trainer._pending == []  # t-2 is the next owner's too


def test_reassigned_partition_is_published_committed_and_not_read_twice(tmp_path: Path) -> None:
    job = FakeJob()
    t1 = msg(trigger("t-1"), 0)
    # After the revoke + re-assign, the fetch restarts at the committed offset: t-1 again.
    batches = [[t1], [t1, msg(trigger("t-2"), 1)]]
    trainer, consumer, producer, _ = fake_trainer(tmp_path, batches, job)

    def rebalance() -> None:
        trainer._on_revoke(cast(Any, consumer), cast(Any, [FakeTP(TOPIC, 0)]))
        trainer._on_assign(cast(Any, consumer), cast(Any, [FakeTP(TOPIC, 0)]))
        consumer.on_poll = None
        job.release.set()

    consumer.on_poll = rebalance
    assert trainer.run_once() == 1
    assert trainer.run_once() == 1
    assert job.calls == ["t-1", "t-2"]
    assert consumer.committed == [(TOPIC, 0, 1), (TOPIC, 0, 2)]
    assert len(producer.sent) == 2


def test_failed_deliveries_are_retried_paused(tmp_path: Path) -> None:
    job = FakeJob()
    job.release.set()
    trainer, consumer, producer, metrics = fake_trainer(
        tmp_path, [[msg(trigger(), 0)]], job, fail=2
    )
    assert trainer.run_once() == 1
    assert len(producer.sent) == 1
    assert consumer.committed == [(TOPIC, 0, 1)]
    assert metrics.get_sample_value("learnstream_trainer_delivery_errors_total") == 2.0


def test_stop_during_failing_delivery_commits_nothing(tmp_path: Path) -> None:
    job = FakeJob()
    job.release.set()
    trainer, consumer, producer, _ = fake_trainer(tmp_path, [[msg(trigger(), 0)]], job, fail=100)
    consumer.on_poll = trainer.stop.set
    assert trainer.run_once() == 0
    assert consumer.committed == []
    assert producer.sent == []
    assert not consumer.paused


def test_a_failed_commit_stops_the_partition_and_reads_the_rest_again(tmp_path: Path) -> None:
    # The broker refuses the commit of t-1 (e.g. a rebalance is under way): t-2 must not be
    # trained on a partition that may be moving; the fetch goes back to just after t-1.
    job = FakeJob()
    job.release.set()
    t1, t2 = trigger("t-1"), trigger("t-2")
    batches = [[msg(t1, 0), msg(t2, 1)], [msg(t2, 1)]]  # the second: the re-read after the seek
    trainer, consumer, producer, metrics = fake_trainer(tmp_path, batches, job)
    consumer.failing_commits = 1
    assert trainer.run_once() == 0
    assert job.calls == ["t-1"]
    assert consumer.seeks == [(TOPIC, 0, 1)]
    assert consumer.committed == []
    assert metrics.get_sample_value("learnstream_trainer_commit_errors_total") == 1.0
    assert trainer.run_once() == 1  # t-2, read again; its commit covers t-1 too
    assert job.calls == ["t-1", "t-2"]
    assert consumer.committed == [(TOPIC, 0, 2)]
    assert len(producer.sent) == 2


def test_a_runner_that_raises_becomes_a_failed_result(tmp_path: Path) -> None:
    def boom(settings: Settings, trigger: TrainingTrigger, **kw: Any) -> TrainingResult:
        raise RuntimeError("out of memory")

    consumer = FakeConsumer([[msg(trigger(), 0)]], assigned=[FakeTP(TOPIC, 0)])
    producer = FakeProducer(consumer.calls)
    trainer = TrainerConsumer(
        settings_for(tmp_path),
        registry=CollectorRegistry(),
        job_runner=boom,
        poll_timeout=0.01,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    assert trainer.run_once() == 1
    published = json.loads(producer.sent[0][2])
    assert published["status"] == "failed"
    assert "out of memory" in published["reason"]


def test_sigterm_requests_a_stop_and_the_handlers_are_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    groups: list[str] = []

    def fake_run(self: TrainerConsumer) -> None:
        groups.append(self.group_id)
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append(self.stop.wait(5))

    monkeypatch.setattr(TrainerConsumer, "run", fake_run)
    before = signal.getsignal(signal.SIGTERM)
    # group_id, as for run_sink
    run_trainer(settings_for(tmp_path), registry=CollectorRegistry(), group_id="trainers-b")
    assert seen == [True]
    assert groups == ["trainers-b"]
    assert signal.getsignal(signal.SIGTERM) is before
