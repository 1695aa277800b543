"""What only a real Kafka broker shows, driven as an operator drives it (the CLI, kcat).

The mock cluster has no CreateTopics, DescribeConfigs, DescribeGroups or timestamp index, so
these run on the suite's real broker (or a fresh one of their own) and skip on the mock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from schemas.topics import TOPICS
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import recent_base_ms

pytestmark = pytest.mark.integration

TS0 = recent_base_ms()  # never a fixed old date: retention would delete the records


def learnstream(
    bootstrap: str, *args: str, data_dir: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `learnstream ARGS` as a user would, against ``bootstrap``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(LEARNSTREAM_DATA_DIR=str(data_dir), LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap)
    return subprocess.run(
        [sys.executable, "-m", "learnstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def fresh_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own, with no topic yet (the session broker has many)."""
    if os.environ.get("LEARNSTREAM_TEST_BROKER") == "mock" or os.environ.get(
        "LEARNSTREAM_TEST_BOOTSTRAP"
    ):
        pytest.skip("needs the suite's own local Kafka")
    from learnstream.localkafka import LocalKafka

    kafka = LocalKafka(tmp_path_factory.mktemp("fresh-kafka")).start()
    try:
        yield kafka.bootstrap_servers
    finally:
        kafka.stop()


def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_configs([ConfigResource("topic", n) for n in names])
    return {
        res.name: {k: v.value for k, v in fut.result(10).items()} for res, fut in futures.items()
    }


def partitions_of(bootstrap: str) -> dict[str, int]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def test_topics_create_configures_the_registry_and_is_idempotent(
    fresh_kafka: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": fresh_kafka})
    # One registry topic exists already, with too few partitions.
    short = "telemetry.ralph"
    admin.create_topics([NewTopic(short, num_partitions=2, replication_factor=1)])[short].result(20)

    first = learnstream(fresh_kafka, "topics", "create", data_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    for name in TOPICS:
        if name != short:
            assert f"{name}" in first.stdout and "created" in first.stdout
    assert f"exists with 2 partitions; the registry wants {TOPICS[short].partitions}" in (
        first.stderr
    ), first.stderr
    assert "warning" in first.stderr

    have = partitions_of(fresh_kafka)
    configs = topic_configs(fresh_kafka, [n for n in TOPICS if n != short])
    for name, spec in TOPICS.items():
        if name == short:
            assert have[name] == 2  # warned about, not changed
            continue
        assert have[name] == spec.partitions, name
        assert configs[name]["cleanup.policy"] == spec.cleanup_policy, name
        assert configs[name]["retention.ms"] == str(spec.retention_ms), name

    again = learnstream(fresh_kafka, "topics", "create", data_dir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert partitions_of(fresh_kafka) == have
    assert topic_configs(fresh_kafka, [n for n in TOPICS if n != short]) == configs

    described = learnstream(
        fresh_kafka, "topics", "describe", "patterns.learned", data_dir=tmp_path
    )
    assert described.returncode == 0, described.stderr
    assert "retention.ms = -1" in described.stdout, described.stdout


def _produce_timed(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=json.dumps({"i": i}).encode(),
            partition=i % partitions,
            timestamp=TS0 + i * 1000,
        )
    assert producer.flush(20) == 0


def _member(bootstrap: str, group: str, topic: str, **extra: Any) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _drain(consumer: Consumer, count: int, timeout: float = 30) -> list[int]:
    """The ``i`` of every record read until ``count`` arrived (then a short settle)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    settle: float | None = None
    while time.monotonic() < deadline:
        if settle is not None and time.monotonic() > settle:
            break
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        seen.append(json.loads(msg.value())["i"])
        if len(seen) >= count and settle is None:
            settle = time.monotonic() + 1.5
    return seen


def test_replay_to_time_seeks_by_the_brokers_timestamp_index(
    real_kafka: BrokerUnderTest, tmp_path: Path
) -> None:
    bootstrap = real_kafka.bootstrap_servers
    topic, group = f"replay-time-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(20)
    _produce_timed(bootstrap, topic, 30, 3)
    first = _member(bootstrap, group, topic)
    assert sorted(_drain(first, 30)) == list(range(30))
    first.commit(asynchronous=False)
    first.close()

    cut = 17  # records 17.. are at or after the time
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((TS0 + cut * 1000) / 1000))
    out = learnstream(
        bootstrap, "replay", "--group", group, "--topic", topic, "--to-time", iso, data_dir=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "committed new offsets for 3 partitions" in out.stdout

    again = _member(bootstrap, group, topic)
    try:
        assert sorted(_drain(again, 30 - cut)) == list(range(cut, 30))
    finally:
        again.close()


def test_replay_refuses_while_the_group_has_members(
    real_kafka: BrokerUnderTest, tmp_path: Path
) -> None:
    bootstrap = real_kafka.bootstrap_servers
    topic, group = f"replay-members-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    _produce_timed(bootstrap, topic, 8, 1)
    member = _member(bootstrap, group, topic, **{"client.id": "the-sink-under-test"})
    try:
        assert len(_drain(member, 8)) == 8
        member.commit(asynchronous=False)
        args = ("replay", "--group", group, "--topic", topic, "--to-start")
        refused = learnstream(bootstrap, *args, data_dir=tmp_path)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "active member" in refused.stderr and "the-sink-under-test" in refused.stderr
        forced = learnstream(bootstrap, *args, "--force", data_dir=tmp_path)
        # Kafka lets no admin change the offsets of a group with members: --force skips our
        # check, and the broker's refusal is reported in one line.
        assert forced.returncode in (0, 1), forced.stderr
        assert "Traceback" not in forced.stderr
    finally:
        member.close()
    after = learnstream(bootstrap, *args, data_dir=tmp_path)  # the member has left
    assert after.returncode == 0, after.stdout + after.stderr
    committed = Consumer({"bootstrap.servers": bootstrap, "group.id": group}).committed(
        [TopicPartition(topic, 0)], timeout=10
    )
    assert committed[0].offset == 0


def _kcat(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-J", "-e", "-q", "-o", "beginning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _headers(record: dict[str, Any]) -> dict[str, str]:
    flat = record.get("headers") or []  # kcat -J: [name, value, name, value, ...]
    return dict(zip(flat[::2], flat[1::2], strict=True))


DOCUMENTED_HEADERS = {"source", "event_type", "schema_version", "content-type"}


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt kcat)")
def test_kcat_reads_every_registry_topic_with_keys_json_and_headers(
    fresh_kafka: str, tmp_path: Path
) -> None:
    """What `rpk topic consume T` shows, read with `kcat -C -J` from each registry topic.

    The telemetry topics and the DLQ are written by `learnstream produce send` (the SDK's
    headers and keys); the downstream topics get one record each with the documented headers.
    """
    from tests.conftest import EXAMPLES

    for source in ("ralph", "aidb", "hybrid", "vscode"):
        lines = (EXAMPLES / f"{source}-events.jsonl").read_text().splitlines()[:3]
        if source == "aidb":
            lines.append('{"event_type": "query", "session_id": 7}')  # invalid: to the DLQ
        path = tmp_path / f"{source}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        sent = learnstream(
            fresh_kafka, "produce", "send", "--source", source, str(path), data_dir=tmp_path
        )
        assert sent.returncode in (0, 1), sent.stderr  # 1: an invalid line was dead-lettered
    run = uuid.uuid4().hex[:8]
    producer = Producer({"bootstrap.servers": fresh_kafka})
    downstream = [n for n in TOPICS if not n.startswith("telemetry.")]
    for name in downstream:
        producer.produce(
            name,
            key=f"{TOPICS[name].key}-{run}".encode(),
            value=json.dumps({"probe": run}).encode(),
            headers=[
                ("source", b"ralph"),
                ("event_type", b"probe"),
                ("schema_version", b"1"),
                ("content-type", b"application/json"),
            ],
        )
    assert producer.flush(20) == 0

    for name in TOPICS:
        records = _kcat(fresh_kafka, name)
        assert records, f"kcat read nothing from {name}"
        for record in records:
            assert isinstance(json.loads(record["payload"]), dict), (name, record)
            assert record["key"], (name, record)
            headers = _headers(record)
            assert headers["content-type"] == "application/json", (name, headers)
            if name == "telemetry.dlq":
                assert {"source", "event_type"} <= set(headers), headers
            else:
                assert set(headers) >= DOCUMENTED_HEADERS, (name, headers)
        if name.startswith("telemetry.") and name != "telemetry.dlq":
            source = name.removeprefix("telemetry.")
            assert {_headers(r)["source"] for r in records} == {source}
            assert all(json.loads(r["payload"])["event_id"] for r in records)
    letters = [json.loads(r["payload"]) for r in _kcat(fresh_kafka, "telemetry.dlq")]
    assert any("session_id" in (d.get("error") or "") for d in letters), letters
