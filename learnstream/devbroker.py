"""The dev broker: librdkafka's built-in mock cluster, on loopback, behind one launcher.

It speaks the Kafka protocol, so confluent-kafka and aiokafka (Faust) clients work against it,
consumer groups included. Its limits: everything is in memory and gone when it stops; topics
are auto-created on first use (4 partitions each); CreateTopics, DeleteTopics and
DescribeConfigs are not implemented. Production uses Redpanda or Kafka.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("learnstream.devbroker")


class DevBroker:
    """A running mock cluster, alive as long as this object (and its process) is."""

    def __init__(self, num_brokers: int = 1) -> None:
        from confluent_kafka import Producer

        # The cluster lives inside this client handle; log level 4 hides the "mock enabled" notice.
        self._handle = Producer({"test.mock.num.brokers": num_brokers, "log_level": 4})
        metadata = self._handle.list_topics(timeout=10)
        brokers = sorted(metadata.brokers.values(), key=lambda b: b.id)
        self.bootstrap_servers = ",".join(f"{b.host}:{b.port}" for b in brokers)
        self.num_brokers = num_brokers

    def poll(self, timeout: float) -> None:
        """Serve the handle's background events for up to ``timeout`` seconds."""
        self._handle.poll(timeout)

    def close(self) -> None:
        """Stop the cluster; everything in it is lost."""
        self._handle.flush(0)
        del self._handle


def write_record(
    path: Path, bootstrap_servers: str, num_brokers: int, **extra: Any
) -> dict[str, Any]:
    """Record the broker's address atomically so other commands find it.

    ``extra`` fields are added as they are (`learnstream kafka` adds ``kind="kafka"``, the
    Java ``pids`` and more); ``pid`` is this process, the one that removes the record.
    """
    record = {
        "bootstrap_servers": bootstrap_servers,
        "pid": os.getpid(),
        "num_brokers": num_brokers,
        "started_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return record


def remove_record(path: Path) -> None:
    """Remove the record if it is this process's."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if record.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def serve(broker_file: Path, num_brokers: int = 1, stop: threading.Event | None = None) -> str:
    """Run the dev broker until SIGINT/SIGTERM (or ``stop`` is set); returns its address."""
    from learnstream.signals import install_stop_handlers

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_handlers(stop, log)
    broker = DevBroker(num_brokers)
    write_record(broker_file, broker.bootstrap_servers, num_brokers)
    print(f"dev broker listening on {broker.bootstrap_servers}", flush=True)
    print(f"address recorded in {broker_file}; stop with Ctrl-C", flush=True)
    try:
        while not stop.is_set():
            broker.poll(0.2)
    finally:
        remove_record(broker_file)
        broker.close()
        print("dev broker stopped", flush=True)
    return broker.bootstrap_servers
