"""The dev broker: librdkafka's built-in mock cluster, on loopback, behind one launcher.

It speaks the Kafka protocol, so confluent-kafka and aiokafka (Faust) clients work against it,
consumer groups included. Its limits: everything is in memory and gone when it stops; topics
are auto-created on first use (4 partitions each); CreateTopics, DeleteTopics and
DescribeConfigs are not implemented. Production uses Redpanda or Kafka.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
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


class PortInUseError(OSError):
    """The fixed port asked for is taken."""


class PortForwarder:
    """A fixed loopback port that splices every connection to the mock cluster's bootstrap.

    librdkafka's mock cluster picks its own ports; this gives it a stable bootstrap address.
    Clients bootstrap here and then connect to the brokers the metadata names (loopback too).
    """

    def __init__(self, port: int, target: str) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        try:
            self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        except OSError as exc:
            raise PortInUseError(f"port {port} on 127.0.0.1 is not free ({exc.strerror})") from None
        self.port = int(self._server.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="devbroker-port", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (open connections end with their peers)."""
        self._closed.set()
        self._server.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def serve(
    broker_file: Path,
    num_brokers: int = 1,
    stop: threading.Event | None = None,
    port: int = 0,
) -> str:
    """Run the dev broker until SIGINT/SIGTERM (or ``stop`` is set); returns its address.

    With ``port`` the bootstrap address is ``127.0.0.1:<port>`` on every start (raises
    `PortInUseError` when it is taken); 0: whatever ports the mock cluster picks.
    """
    from learnstream.core.signals import install_stop_handlers

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_handlers(stop, log)
    broker = DevBroker(num_brokers)
    forwarder = None
    address = broker.bootstrap_servers
    if port:
        try:
            forwarder = PortForwarder(port, broker.bootstrap_servers.split(",")[0])
        except PortInUseError:
            broker.close()
            raise
        address = f"127.0.0.1:{forwarder.port}"
    write_record(broker_file, address, num_brokers)
    print(f"dev broker listening on {address}", flush=True)
    print(f"address recorded in {broker_file}; stop with Ctrl-C", flush=True)
    try:
        while not stop.is_set():
            broker.poll(0.2)
    finally:
        remove_record(broker_file)
        if forwarder is not None:
            forwarder.close()
        broker.close()
        print("dev broker stopped", flush=True)
    return address
