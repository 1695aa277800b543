"""The trainer consumer against the dev broker, training the tiny local model on the CPU."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from consumers.trainer import run_trainer
from learnstream.core.settings import TrainingSettings, load_settings
from schemas.dlq import DeadLetter
from schemas.topics import DLQ
from schemas.training import TrainingResult, TrainingTrigger, TriggerReason
from tests.integration.kafka_helpers import Record, consume
from tests.tinymodel import FAST, build_tiny_model, write_dataset
from trainers.adapters import AdapterStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) records to partition 0 (like training.triggers) and wait for acks."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0, on_delivery=delivered)
    assert producer.flush(15) == 0
    assert not errors, errors


def test_trainer_trains_once_republishes_duplicates_and_dead_letters(
    kafka_env: str, unique: str, tmp_path: Path
) -> None:
    model = str(build_tiny_model(tmp_path / "model"))
    settings = load_settings(
        data_dir=tmp_path / "data", base_model=model, training=TrainingSettings(**FAST)
    )
    write_dataset(settings.dataset_path, queries=40)
    # training.triggers and training.results are shared by the whole test session (and other
    # tests produce triggers to them): this test uses topics of its own.
    triggers, results = f"training.triggers.{unique}", f"training.results.{unique}"
    trigger = TrainingTrigger(
        trigger_id=f"trigger-{unique}",
        base_model=model,
        reasons=[TriggerReason.LEARNINGS],
        learnings_since_training=120,
    )
    value = trigger.model_dump_json().encode()
    produce(
        kafka_env,
        triggers,
        [(b"junk", b'{"not": "a trigger"}'), (model.encode(), value), (model.encode(), value)],
    )
    produce(kafka_env, results, [(b"unrelated", b"{}")])  # the topic exists for the reader

    metrics = CollectorRegistry()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_trainer,
        args=(settings,),
        kwargs={
            "stop": stop,
            "registry": metrics,
            "group_id": f"trainer-{unique}",
            "topic": triggers,
            "results_topic": results,
            "poll_timeout": 0.2,
        },
        daemon=True,
    )
    thread.start()

    def ours(record: Record) -> bool:
        return bool(record.json().get("trigger_id") == trigger.trigger_id)

    try:
        published = consume(
            kafka_env, [results], until=lambda kept: len(kept) >= 2, keep=ours, timeout=60
        )
        letters = consume(
            kafka_env,
            [DLQ.name],
            until=lambda kept: len(kept) >= 1,
            keep=lambda r: r.json().get("topic") == triggers,
            timeout=20,
        )
    finally:
        stopped_at = time.monotonic()
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 5  # idle: stops at once

    # The first trigger trained; its repeat was recognized and its stored result republished.
    assert len(published) == 2, published
    first, again = (TrainingResult.model_validate_json(r.value) for r in published)
    assert first.status in ("promoted", "rejected"), first.reason
    assert first.candidate_version == 1
    assert first.metrics
    assert all(math.isfinite(v) for v in first.metrics.values())
    assert again == first
    for record in published:
        assert record.key == model.encode()
        assert record.headers["source"] == b"trainer"
        assert record.headers["event_type"] == b"training_result"
        assert record.headers["schema_version"] == b"1"
        assert record.headers["content-type"] == b"application/json"
    assert "duplicate" not in published[0].headers
    assert published[1].headers["duplicate"] == b"1"

    registry = AdapterStore.for_settings(settings, model)
    assert registry.versions() == [1]
    job = registry.read_job(trigger.trigger_id)
    assert job is not None
    assert job.state == "done"
    assert job.attempts == 1
    if first.status == "promoted":
        assert registry.active_version() == 1

    # The invalid value went to the DLQ with the reason.
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert letter.stage == "trainer"
    assert "not a valid TrainingTrigger" in letter.error
    assert letter.original() == b'{"not": "a trigger"}'
    assert (letter.partition, letter.offset) == (0, 0)

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        return metrics.get_sample_value(name, labels or {})

    assert sample("learnstream_trainer_triggers_consumed_total") == 3.0
    assert sample("learnstream_trainer_triggers_invalid_total") == 1.0
    assert sample("learnstream_trainer_duplicates_total") == 1.0
    assert sample("learnstream_trainer_jobs_running") == 0.0
    runs = {"base_model": model, "status": first.status}
    assert sample("learnstream_training_runs_total", runs) == 1.0
