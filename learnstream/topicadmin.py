"""Topic administration from the registry, through confluent-kafka's AdminClient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.topics import TOPICS, TopicSpec


@dataclass
class TopicState:
    """A registry topic as the broker sees it."""

    spec: TopicSpec | None
    name: str
    partitions: int | None  # None: the topic does not exist


def _admin(conf: dict[str, Any]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(conf)


def create_topics(
    conf: dict[str, Any], replication_factor: int = 1, timeout: float = 30.0
) -> dict[str, str]:
    """Create every registry topic that is missing; returns name -> what happened.

    ``created``, ``exists``, or for a topic that exists with fewer partitions than the
    registry wants, ``exists with N partitions; the registry wants M ...`` (a warning: keys
    hash to partitions, so adding partitions is left to the operator; nothing is changed).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(conf)
    topics = admin.list_topics(timeout=timeout).topics
    existing = set(topics)
    outcome = {name: "exists" for name in TOPICS if name in existing}
    for name in outcome:
        have, want = len(topics[name].partitions), TOPICS[name].partitions
        if have < want:
            outcome[name] = (
                f"exists with {have} partitions; the registry wants {want} (warning: add "
                f"them with `kafka-topics --alter --partitions {want}` or "
                f"`rpk topic add-partitions {name} --num {want - have}`; keys then move)"
            )
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=replication_factor,
            config=spec.config(),
        )
        for spec in TOPICS.values()
        if spec.name not in existing
    ]
    if not new:
        return outcome
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout)
            outcome[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"
            else:
                raise
    return outcome


def list_topics(conf: dict[str, Any], timeout: float = 10.0) -> list[TopicState]:
    """Registry topics (present or missing) followed by any other topics on the broker."""
    metadata = _admin(conf).list_topics(timeout=timeout)
    states = [
        TopicState(
            spec, name, len(metadata.topics[name].partitions) if name in metadata.topics else None
        )
        for name, spec in TOPICS.items()
    ]
    for name in sorted(metadata.topics):
        if name not in TOPICS and not name.startswith("__"):
            states.append(TopicState(None, name, len(metadata.topics[name].partitions)))
    return states


def describe_topic(
    conf: dict[str, Any], name: str, *, with_configs: bool = True, timeout: float = 10.0
) -> dict[str, Any]:
    """Partitions with leader, replicas and low/high watermarks, plus configs where supported."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import ConfigResource

    admin = _admin(conf)
    # A metadata request naming the topic would auto-create it on brokers that allow that.
    metadata = admin.list_topics(timeout=timeout)
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None:
        raise LookupError(f"topic {name!r} does not exist")
    consumer = Consumer({**conf, "group.id": "learnstream-describe", "enable.auto.commit": False})
    try:
        partitions = []
        for pid in sorted(topic.partitions):
            part = topic.partitions[pid]
            low, high = consumer.get_watermark_offsets(TopicPartition(name, pid), timeout=timeout)
            partitions.append(
                {
                    "partition": pid,
                    "leader": part.leader,
                    "replicas": list(part.replicas),
                    "low": low,
                    "high": high,
                    "messages": high - low,
                }
            )
    finally:
        consumer.close()
    configs: dict[str, str] | None = None
    if not with_configs:
        return {
            "name": name,
            "registry": TOPICS.get(name),
            "partitions": partitions,
            "configs": None,
        }
    try:
        futures = admin.describe_configs([ConfigResource("topic", name)], request_timeout=5)
        entries = next(iter(futures.values())).result(5)
        configs = {k: v.value for k, v in entries.items() if not v.is_default}
    except (KafkaException, TimeoutError):
        configs = None  # the dev broker has no DescribeConfigs
    spec = TOPICS.get(name)
    return {"name": name, "registry": spec, "partitions": partitions, "configs": configs}


def rpk_script() -> str:
    """``deploy/redpanda/topics.sh``: the registry as ``rpk topic create`` commands."""
    lines = [
        "#!/usr/bin/env bash",
        "# Generated from schemas/topics.py by `learnstream topics rpk-script`; do not edit.",
        "# Creates learnstream's topics on Redpanda. Set RPK_BROKERS (or use an rpk profile)",
        "# and REPLICAS (default 1; use 3 on a production cluster).",
        "set -euo pipefail",
        'REPLICAS="${REPLICAS:-1}"',
        "",
    ]
    for spec in TOPICS.values():
        configs = " ".join(f"-c {k}={v}" for k, v in spec.config().items())
        lines.append(
            f'rpk topic create {spec.name} -p {spec.partitions} -r "$REPLICAS" {configs} '
            "--if-not-exists"
        )
    return "\n".join(lines) + "\n"
