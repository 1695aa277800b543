"""The broker a benchmark runs on, chosen by its command line (one copy for every script).

``--broker mock`` (the default) is the dev broker, librdkafka's mock cluster: in-process
(`learnstream.devbroker.DevBroker`, served by a thread) or as `learnstream broker` in a
subprocess, as the script asks. ``--broker kafka`` starts a real Apache Kafka for the script
(`learnstream.localkafka.LocalKafka`, one KRaft node, in a temporary directory; a script that
wants a fresh broker per phase asks for one per phase). ``--bootstrap HOST:PORT`` uses an
existing Kafka/Redpanda instead (it overrides ``--broker``; the kind is detected, so a
`learnstream broker` given this way still counts as the mock).

    ap = argparse.ArgumentParser()
    add_broker_arguments(ap)
    args = ap.parse_args()
    with broker_from_args(args, tmp_dir) as broker:
        broker.create_topics(["bench.in", "bench.out"])
        ... broker.bootstrap ... print(f"broker: {broker.label}")

On a real broker a consumer that subscribes to a topic that does not exist yet only sees it at
its next metadata refresh, so `BrokerInfo.create_topics` creates the benchmark's topics up
front (AdminClient, 4 partitions: what the mock auto-creates). On an existing cluster the
topics a benchmark created are deleted again when it ends; records it wrote to topics that
were there already (the registry's `telemetry.*`, say) stay.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

KINDS = ("mock", "kafka")
PARTITIONS = 4  # what the mock creates a topic with (learnstream.core.brokerprofile)
ORIGINS = {
    "thread": "librdkafka mock cluster, in-process",
    "process": "librdkafka mock cluster, `learnstream broker` subprocess",
    "fresh": "Apache Kafka {version}, 1 KRaft node, fresh",
    "existing": "existing cluster, --bootstrap",
}


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--broker {mock,kafka}`` and ``--bootstrap HOST:PORT``."""
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--broker",
        choices=KINDS,
        default="mock",
        help="mock: the dev broker (librdkafka's mock cluster; default); kafka: a real Apache "
        "Kafka started for the run (learnstream.localkafka, 1 node, temporary directory)",
    )
    group.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        default=None,
        help="an existing Kafka/Redpanda to run on instead (overrides --broker); the topics "
        "the benchmark creates there are deleted at the end",
    )


@dataclass
class BrokerInfo:
    """A running broker: its address, what it is, where it came from, its processes."""

    kind: Literal["mock", "kafka"]
    bootstrap: str
    origin: Literal["thread", "process", "fresh", "existing"]
    pids: tuple[int, ...] = ()  # the broker's own processes (none for in-process/existing)
    version: str = ""
    created: list[str] = field(default_factory=list)  # topics create_topics made

    @property
    def is_mock(self) -> bool:
        """True for the dev broker."""
        return self.kind == "mock"

    @property
    def label(self) -> str:
        """What to print in a result table, e.g. ``kafka (Apache Kafka 4.4.0, ...) at ...``."""
        where = ORIGINS[self.origin].format(version=self.version)
        return f"{self.kind} ({where}) at {self.bootstrap}"

    def create_topics(self, topics: Iterable[str], partitions: int = PARTITIONS) -> None:
        """Make sure ``topics`` exist with leaders before anything subscribes to them.

        The mock creates a topic on the first metadata request for it; a real broker gets a
        CreateTopics (replication: the broker's default) and is asked until every partition
        has a leader. A topic that already exists is left as it is.
        """
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        names = list(dict.fromkeys(topics))
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        if self.is_mock:
            for name in names:
                admin.list_topics(name, timeout=10)
            return
        futures = admin.create_topics(
            [NewTopic(t, partitions, replication_factor=-1) for t in names], operation_timeout=30
        )
        for name, future in futures.items():
            try:
                future.result()
                self.created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
        deadline = time.monotonic() + 30
        while True:
            metadata = admin.list_topics(timeout=10).topics
            missing = [
                t
                for t in names
                if t not in metadata
                or metadata[t].error is not None
                or not metadata[t].partitions
                or any(p.leader < 0 for p in metadata[t].partitions.values())
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics without leaders after 30 s: {', '.join(missing)}")
            time.sleep(0.1)

    def start_group_at_end(self, group: str, topics: Iterable[str]) -> None:
        """Commit ``group``'s offsets at the end of ``topics`` so it skips what is there now.

        Only on an existing cluster (a fresh broker has no history); a new group would
        otherwise read everything earlier runs left (``auto.offset.reset=earliest``).
        """
        if self.origin != "existing":
            return
        from confluent_kafka import (
            Consumer,
            ConsumerGroupTopicPartitions,
            KafkaException,
            TopicPartition,
        )
        from confluent_kafka.admin import AdminClient

        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{group}-probe"})
        deadline = time.monotonic() + 30
        try:
            ends = []
            for topic in topics:
                meta = probe.list_topics(topic, timeout=10).topics[topic]
                for p in sorted(meta.partitions):
                    while True:  # a partition created a moment ago: NOT_LEADER for a while
                        try:
                            _, high = probe.get_watermark_offsets(
                                TopicPartition(topic, p), timeout=10
                            )
                            break
                        except KafkaException:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.2)
                    ends.append(TopicPartition(topic, p, high))
        finally:
            probe.close()
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        request = [ConsumerGroupTopicPartitions(group, ends)]
        for future in admin.alter_consumer_group_offsets(request).values():
            future.result()

    def delete_created(self) -> None:
        """Delete the topics this run created (on an existing cluster; best effort)."""
        if self.origin != "existing" or not self.created:
            return
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.delete_topics(self.created, operation_timeout=30).values():
            try:
                future.result()
            except Exception as exc:  # leave the rest; say which one stayed
                print(f"note: could not delete a benchmark topic: {exc}", file=sys.stderr)
        self.created.clear()


@contextmanager
def broker_from_args(
    args: argparse.Namespace, tmp_dir: Path, *, mock: Literal["thread", "process"] = "thread"
) -> Iterator[BrokerInfo]:
    """The broker ``args`` ask for, running until the block ends (then stopped, if ours).

    ``tmp_dir`` holds a subprocess dev broker's or a local Kafka's data (one directory per
    broker: a script with a fresh broker per phase passes one per phase). ``mock`` says how
    the dev broker runs: a thread of this process, or a `learnstream broker` subprocess.
    Start a local Kafka from the main thread: its Java process dies with the starting thread.
    """
    if args.bootstrap:
        info = BrokerInfo(detect_kind(args.bootstrap), args.bootstrap, "existing")
        try:
            yield info
        finally:
            info.delete_created()
    elif args.broker == "kafka":
        from learnstream.localkafka import LocalKafka

        tmp_dir.mkdir(parents=True, exist_ok=True)
        with LocalKafka(tmp_dir) as kafka:
            load_coordinators(kafka.bootstrap_servers)
            yield BrokerInfo(
                "kafka",
                kafka.bootstrap_servers,
                "fresh",
                tuple(kafka.pids),
                version=kafka.kafka_version,
            )
    elif mock == "process":
        proc = DevBrokerProcess(tmp_dir)
        try:
            yield BrokerInfo("mock", proc.bootstrap, "process", (proc.proc.pid,))
        finally:
            proc.stop()
    else:
        from learnstream.devbroker import DevBroker

        broker = DevBroker()
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                broker.poll(0.2)

        thread = threading.Thread(target=serve, name="dev-broker", daemon=True)
        thread.start()
        try:
            yield BrokerInfo("mock", broker.bootstrap_servers, "thread")
        finally:
            stop.set()
            thread.join(5)
            broker.close()


def load_coordinators(bootstrap: str) -> None:
    """Have a fresh Kafka create and load its transaction and group coordinators now.

    Kafka creates ``__transaction_state`` at the first InitProducerId (every idempotent
    producer asks for one) and ``__consumer_offsets`` at the first group look-up; otherwise
    the first measured producer or group waits for that ("Coordinator load in progress").
    """
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": "bench-warm-up", "log_level": 3}
    )
    producer.init_transactions(60)
    del producer
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-warm-up", "log_level": 3}
    )
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                consumer.committed([TopicPartition("bench.warm-up", 0)], timeout=10)
                return
            except KafkaException:  # NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS meanwhile
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def detect_kind(bootstrap: str) -> Literal["mock", "kafka"]:
    """``mock`` when the cluster at ``bootstrap`` is librdkafka's mock cluster, else ``kafka``."""
    from confluent_kafka.admin import AdminClient

    from learnstream.core.kafka import MOCK_CLUSTER_PREFIX

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    return "mock" if str(metadata.cluster_id or "").startswith(MOCK_CLUSTER_PREFIX) else "kafka"


class DevBrokerProcess:
    """`learnstream broker` in a subprocess with its own data dir."""

    def __init__(self, data_dir: Path) -> None:
        env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir)}
        env.pop("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", "broker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        record = data_dir / "broker.json"
        deadline = time.monotonic() + 30
        while not record.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("dev broker did not start")
            time.sleep(0.05)
        self.bootstrap: str = json.loads(record.read_text())["bootstrap_servers"]

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
