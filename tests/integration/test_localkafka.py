"""`learnstream kafka`, a real Apache Kafka: data that survives a restart, a 3-node cluster that
survives a crashed node. Skipped without Java 17+ (or without Maven and an empty jar cache)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, PartitionMetadata

from learnstream import localkafka as lk
from learnstream.core.kafka import MOCK_CLUSTER_PREFIX

pytestmark = pytest.mark.integration

# The suite's autouse fixture clears LEARNSTREAM_*; a jar cache chosen by the caller still counts.
CACHE = Path(os.environ.get(lk.CACHE_ENV) or lk.default_cache_dir())


def _unavailable() -> str | None:
    try:
        lk.find_java()
    except lk.LocalKafkaError as exc:
        return str(exc)
    if not lk.jars_cached(CACHE) and not shutil.which("mvn"):
        return f"no Kafka jars in {CACHE} and no Maven to fetch them"
    return None


_WHY = _unavailable()
requires_kafka = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


class KafkaCli:
    """`python -m learnstream kafka` in a subprocess on its own data directory."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.record = data_dir / "broker.json"
        env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir), lk.CACHE_ENV: str(CACHE)}
        env.pop("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", "kafka", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 240  # the first run ever resolves the jars with Maven
        while not self.record.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"kafka did not start: {self.proc.communicate()[0]}")
            time.sleep(0.05)
        self.info: dict[str, object] = json.loads(self.record.read_text())
        self.bootstrap_servers = str(self.info["bootstrap_servers"])

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and output."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


@pytest.fixture
def stopped_cli() -> Iterator[list[KafkaCli]]:
    """Launchers a test starts; any still running at its end are killed."""
    started: list[KafkaCli] = []
    yield started
    for cli in started:
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.wait()


def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value() or b"")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=15
        )
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def _produce(bootstrap: str, topic: str, values: list[bytes], **conf: object) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **conf})
    errors: list[KafkaError] = []
    for value in values:
        producer.produce(
            topic, value=value, on_delivery=lambda err, _m: errors.append(err) if err else None
        )
    assert producer.flush(30) == 0
    assert errors == []


def _partition(admin: AdminClient, topic: str) -> PartitionMetadata:
    """Partition 0 of ``topic`` once the metadata names its leader."""
    deadline = time.monotonic() + 15
    while True:
        topics = admin.list_topics(topic, timeout=10).topics
        partitions = topics[topic].partitions if topic in topics else {}
        if (0 in partitions and partitions[0].leader >= 0) or time.monotonic() > deadline:
            return partitions[0]
        time.sleep(0.1)


@requires_kafka
def test_single_node_keeps_topics_and_offsets_across_restarts(
    tmp_path: Path, unique: str, stopped_cli: list[KafkaCli]
) -> None:
    data = tmp_path / "data"
    topic, group = f"persist.{unique}", f"g.{unique}"
    stopped_cli.append(first := KafkaCli(data))
    assert first.info["kind"] == "kafka"
    assert first.info["pid"] == first.proc.pid  # the launcher, as read_dev_broker expects
    assert first.info["pids"] and first.proc.pid not in first.info["pids"]  # type: ignore[operator]

    admin = AdminClient({"bootstrap.servers": first.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(15)
    assert not str(admin.list_topics(timeout=10).cluster_id).startswith(MOCK_CLUSTER_PREFIX)
    _produce(first.bootstrap_servers, topic, [b"kept"])
    assert _consume(first.bootstrap_servers, topic, group, 1) == [b"kept"]

    code, out = first.stop()
    assert code == 0, out
    assert "Kafka stopped" in out
    assert not first.record.exists()
    assert lk.port_free(int(first.bootstrap_servers.rpartition(":")[2]))  # Kafka is gone

    stopped_cli.append(second := KafkaCli(data))
    assert second.bootstrap_servers == first.bootstrap_servers  # the port is remembered
    assert second.info["cluster_id"] == first.info["cluster_id"]
    metadata = AdminClient({"bootstrap.servers": second.bootstrap_servers}).list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 2
    assert _committed(second.bootstrap_servers, topic, group, 2) == 1
    assert _consume(second.bootstrap_servers, topic, f"fresh.{unique}", 1) == [b"kept"]
    code, out = second.stop()
    assert code == 0, out

    bad = _run_cli(data, "--set", "num.partitions=many")  # formatted already: the node fails
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: Kafka node 1 exited during startup (code 1); last lines")
    assert "Invalid value many for configuration num.partitions" in bad.stderr  # from its log
    assert "Traceback" not in bad.stderr
    assert not first.record.exists()


@requires_kafka
def test_three_nodes_survive_a_killed_node(tmp_path: Path, unique: str) -> None:
    topic = f"replicated.{unique}"
    with lk.LocalKafka(tmp_path / "data", nodes=3, cache_dir=CACHE) as kafka:
        assert len(kafka.pids) == 3
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        admin.create_topics([NewTopic(topic, 1)])[topic].result(15)  # RF 3 by default
        _produce(kafka.bootstrap_servers, topic, [b"before"])
        partition = _partition(admin, topic)
        assert sorted(partition.replicas) == [1, 2, 3]

        kafka.kill_node(partition.leader)  # the partition's leader crashes (SIGKILL)
        assert len(kafka.pids) == 2
        alive = ",".join(kafka.node_address(i) for i in (1, 2, 3) if i != partition.leader)
        _produce(alive, topic, [b"after-1", b"after-2"])  # acks=all: 2 in-sync replicas left

        kafka.restart_node(partition.leader)
        assert len(kafka.pids) == 3
        brokers = AdminClient({"bootstrap.servers": alive}).list_topics(timeout=10).brokers
        assert sorted(brokers) == [1, 2, 3]
        got = _consume(kafka.bootstrap_servers, topic, f"g.{unique}", 3)
        assert sorted(got) == [b"after-1", b"after-2", b"before"]
    assert kafka.pids == []


def _run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir), lk.CACHE_ENV: str(CACHE)}
    return subprocess.run(
        [sys.executable, "-m", "learnstream", "kafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@requires_kafka
def test_port_in_use_and_a_failing_node_are_reported(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        busy = _run_cli(tmp_path / "a", "--port", str(port))
    assert busy.returncode == 1
    assert busy.stderr == (
        f"Error: port 127.0.0.1:{port} (node 1's client port) is in use; stop what listens "
        "there, or pass another --port\n"
    )

    bad = _run_cli(tmp_path / "b", "--set", "num.partitions=many")  # caught by format
    assert bad.returncode == 1
    assert bad.stderr.startswith(
        f"Error: formatting the Kafka storage in {tmp_path / 'b' / 'kafka'} failed (node 1: "
        "org.apache.kafka.common.config.ConfigException: Invalid value many for configuration "
        "num.partitions"
    )
    assert bad.stderr.count("\n") == 1
