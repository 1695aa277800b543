"""Client configuration shared by every confluent-kafka and aiokafka client of a process."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from learnstream.core.settings import Settings


class BrokerNotConfiguredError(RuntimeError):
    """Neither bootstrap servers nor a running dev broker were found."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reachable(addresses: str, timeout: float = 1.0) -> bool:
    """Whether any of the comma-separated ``host:port`` addresses accepts a connection."""
    for address in addresses.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def read_dev_broker(broker_file: Path) -> dict[str, Any] | None:
    """The dev broker's record if its process is alive and its port answers, else None."""
    try:
        record = json.loads(broker_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _pid_alive(int(record.get("pid", -1))):
        return None
    if not _reachable(str(record.get("bootstrap_servers", ""))):
        return None
    return record


MOCK_CLUSTER_PREFIX = "mockCluster"


@functools.lru_cache(maxsize=16)
def _is_mock_cluster(servers: str, security: tuple[tuple[str, str], ...]) -> bool:
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("learnstream.librdkafka.probe")
    quiet.setLevel(logging.CRITICAL)  # an unreachable broker is reported by the caller
    try:
        conf: dict[str, Any] = {"bootstrap.servers": servers, "logger": quiet, **dict(security)}
        metadata = AdminClient(conf).list_topics(timeout=10)
    except Exception:  # unreachable now: treat as a real cluster, the safe default
        return False
    return str(metadata.cluster_id or "").startswith(MOCK_CLUSTER_PREFIX)


def is_dev_broker(settings: Settings) -> bool:
    """True when this process talks to the dev broker (librdkafka's mock cluster).

    ``LEARNSTREAM_KAFKA__DEV_BROKER`` decides when set; otherwise: no bootstrap servers
    configured and the recorded broker is the dev broker (not a `learnstream kafka`, whose
    record says ``"kind": "kafka"``), or the cluster's id is the mock's.
    """
    if settings.kafka.dev_broker is not None:
        return settings.kafka.dev_broker
    if settings.kafka.bootstrap_servers is None:
        record = read_dev_broker(settings.broker_file)
        return record is None or record.get("kind") != "kafka"
    security = tuple(sorted(settings.kafka.security_config().items()))
    return _is_mock_cluster(settings.kafka.bootstrap_servers, security)


def bootstrap_servers(settings: Settings) -> str:
    """The configured bootstrap servers, else the running dev broker's address."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    record = read_dev_broker(settings.broker_file)
    if record is None:
        raise BrokerNotConfiguredError(
            "no Kafka broker: set LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS, or start the dev broker "
            f"with `learnstream broker` (it records its address in {settings.broker_file})"
        )
    return str(record["bootstrap_servers"])


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka properties for a confluent-kafka client: bootstrap, client id, security, extra."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(settings),
        "client.id": settings.kafka.client_id,
    }
    conf.update(settings.kafka.security_config())
    conf.update(settings.kafka.extra)
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Properties of a manually committing consumer in ``group_id`` (reads from the start)."""
    conf: dict[str, Any] = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
    from learnstream.core.brokerprofile import profile_for

    conf.update(profile_for(settings).consumer_overrides)
    conf.update(settings.kafka.consumer_extra)
    return client_config(settings, **{**conf, **overrides})


def reliable_producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Properties of a producer whose every record must reach all in-sync replicas, once."""
    conf: dict[str, Any] = {
        "enable.idempotence": settings.producer.idempotence,
        "acks": "all",
        "linger.ms": 5,
    }
    return client_config(settings, **{**conf, **overrides})
