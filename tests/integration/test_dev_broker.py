"""The dev broker as users meet it: the CLI, both Kafka clients, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from learnstream.cli import cli
from tests.integration.conftest import DevBrokerProcess

pytestmark = pytest.mark.integration


def _produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[object] = []
    for key, value, headers in records:
        producer.produce(
            topic,
            value=value,
            key=key,
            headers=headers,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
    assert producer.flush(15) == 0
    assert errors == []


def test_confluent_kafka_to_aiokafka_round_trip(mock_broker: DevBrokerProcess, unique: str) -> None:
    """What confluent-kafka (producers, sink) writes, aiokafka (Faust) reads back intact."""
    from aiokafka import AIOKafkaConsumer

    topic = f"roundtrip.{unique}"
    sent = [
        (
            f"task-{i % 3}".encode(),
            json.dumps({"n": i, "text": "héllo"}).encode(),
            [
                ("source", b"ralph"),
                ("event_type", b"task_completed"),
                ("schema_version", b"1"),
                ("content-type", b"application/json"),
            ],
        )
        for i in range(30)
    ]
    _produce(mock_broker.bootstrap_servers, topic, sent)

    async def consume() -> list[tuple[bytes, bytes, int, list[tuple[str, bytes]]]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=mock_broker.bootstrap_servers,
            group_id=f"g.{unique}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got = []
        try:
            while len(got) < len(sent):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 20)
                for msgs in batch.values():
                    got += [(m.key, m.value, m.partition, list(m.headers)) for m in msgs]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(consume())
    assert sorted((k, v) for k, v, _, _ in got) == sorted((k, v) for k, v, _ in sent)
    assert all(h == sent[0][2] for _, _, _, h in got)
    # One key, one partition: each task's events stay in order.
    by_key: dict[bytes, set[int]] = {}
    for key, _value, partition, _ in got:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    for key in by_key:
        ns = [json.loads(v)["n"] for k, v, _, _ in got if k == key]
        assert ns == sorted(ns)


def test_topics_commands_against_the_dev_broker(
    mock_broker: DevBrokerProcess, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bootstrap configured: commands find the dev broker through the data directory."""
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(mock_broker.data_dir))
    runner = CliRunner()
    created = runner.invoke(cli, ["topics", "create"])
    assert created.exit_code == 0, created.output
    assert (
        f"dev broker at {mock_broker.bootstrap_servers}: topics are auto-created" in created.output
    )

    _produce(
        mock_broker.bootstrap_servers,
        "telemetry.aidb",
        [(b"s1", b'{"a": 1}', []), (b"s1", b'{"a": 2}', [])],
    )
    listed = runner.invoke(cli, ["topics", "list"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split()[1] for line in listed.output.splitlines()[1:]}
    assert rows["telemetry.aidb"] == "4"
    assert rows["training.results"] in {"missing", "4"}

    described = runner.invoke(cli, ["topics", "describe", "telemetry.aidb"])
    assert described.exit_code == 0, described.output
    assert "key session_id" in described.output
    total = sum(
        int(line.rsplit("messages ", 1)[1])
        for line in described.output.splitlines()
        if "messages " in line
    )
    assert total >= 2
    assert "configs: not available" in described.output

    missing = runner.invoke(cli, ["topics", "describe", f"nope.{unique}"])
    assert missing.exit_code == 1


def test_second_broker_on_same_data_dir_is_refused(mock_broker: DevBrokerProcess) -> None:
    env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(mock_broker.data_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", "broker"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert f"already running on {mock_broker.bootstrap_servers}" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_broker_stops_cleanly_and_removes_its_record(tmp_path: Path, sig: signal.Signals) -> None:
    broker = DevBrokerProcess(tmp_path)
    record = json.loads((tmp_path / "broker.json").read_text())
    assert record["bootstrap_servers"] == broker.bootstrap_servers
    assert record["pid"] == broker.proc.pid
    broker.proc.send_signal(sig)
    out, _ = broker.proc.communicate(timeout=30)
    assert broker.proc.returncode == 0, out
    assert f"dev broker listening on {broker.bootstrap_servers}" in out
    assert "dev broker stopped" in out
    assert not (tmp_path / "broker.json").exists()


def test_stale_broker_record_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broker.json").write_text(
        json.dumps({"bootstrap_servers": "127.0.0.1:1", "pid": 999_999_999})
    )
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["topics", "list"])
    assert result.exit_code == 1
    assert "no Kafka broker" in result.output
