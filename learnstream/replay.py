"""Replaying topics: moving a consumer group's committed offsets (``learnstream replay``).

Every learnstream consumer group can be rewound or fast-forwarded: the Faust worker's
(its id is ``LEARNSTREAM_WORKER__APP_ID``, default ``learnstream``), the PostgreSQL sink's
(``learnstream-sink``) and the trainer's (``learnstream-trainer``). Because every sink is an
upsert keyed by a deterministic id, re-processing never duplicates.

The pure part (new offsets from watermarks, committed offsets and timestamps; the dry-run
table; whether to refuse) lives in `learnstream.replay_plan`, without a broker, and is
re-exported here; this module talks to the broker through confluent-kafka (imported inside
the functions).

Equivalent rpk commands on Redpanda::

    rpk group describe G                                  # members, committed offsets, lag
    rpk group seek G --to start --topics T                # = replay --to-start
    rpk group seek G --to end --topics T                  # = replay --to-end
    rpk group seek G --to 1762074845000 --topics T        # = replay --to-time (unix ms)

How it works:

- Watermarks come from a Consumer (``get_watermark_offsets``), committed offsets from the
  AdminClient (``list_consumer_group_offsets``, always naming the partitions), timestamps
  from ``offsets_for_times``; offsets are changed with ``alter_consumer_group_offsets``.
- Kafka and Redpanda only let an admin change offsets of a group without members, so the
  command refuses while ``describe_consumer_groups`` lists members (naming them), unless
  ``--force``. Where the broker cannot describe groups it says so and requires ``--force``.

Dev-broker (librdkafka mock cluster) fallbacks, found by experiment with confluent-kafka 2.16;
they run only under the mock's `learnstream.core.brokerprofile.BrokerProfile`:

- DescribeGroups is not implemented (``_UNSUPPORTED_FEATURE``): membership cannot be checked,
  so a real run needs ``--force``.
- OffsetFetch without partitions returns nothing, so partitions are always named.
- ListOffsets by timestamp answers -1 (no such message) for every partition. When a lookup
  says -1 although the partition's last record is at or after the time, the partition is
  scanned from its low watermark instead (cheap on a dev broker; one record read per
  partition on a real broker).
- AlterConsumerGroupOffsets (an OffsetCommit without member id) is rejected with
  ``UNKNOWN_MEMBER_ID`` for any group that ever had members, even after they left. Then,
  and only when the group is not known to have members, the offsets are committed by joining
  the group with a short-lived consumer: it must be assigned every partition being changed
  (otherwise other members are active and nothing is committed), commits and leaves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from learnstream.replay_plan import (  # noqa: F401 (the plan, also public here)
    OFFSET_INVALID,
    UNKNOWN_MEMBER_ID,
    GroupInfo,
    Member,
    PartitionPlan,
    PartitionState,
    ReplayError,
    Target,
    TargetKind,
    TopicPartitionKey,
    choose_target,
    first_at_or_after,
    format_table,
    may_commit_by_joining,
    new_offset,
    offset_mismatches,
    offsets_to_commit,
    parse_time,
    plan_errors,
    plan_resets,
    refusal,
)

# --- talking to the broker ------------------------------------------------------------------


def _admin(conf: Mapping[str, Any]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(dict(conf))


def _probe_consumer(conf: Mapping[str, Any], **extra: Any) -> Any:
    """A consumer that never joins a group nor commits: for watermarks and reads."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            **conf,
            "group.id": "learnstream-replay-probe",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            **extra,
        }
    )


def _kafka_error(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else exc
    name = getattr(err, "name", None)
    text = getattr(err, "str", None)
    if callable(name) and callable(text):
        return f"{name()}: {text()}"
    return str(exc)


def describe_group(conf: Mapping[str, Any], group: str, timeout: float = 10.0) -> GroupInfo:
    """The group's state and active members; ``error`` set when the broker cannot say."""
    from confluent_kafka import KafkaException

    try:
        admin = _admin(conf)  # keep a reference: futures of a collected client never finish
        futures = admin.describe_consumer_groups([group], request_timeout=timeout)
        desc = futures[group].result(timeout + 5)
    except KafkaException as exc:
        return GroupInfo(error=_kafka_error(exc))
    except Exception as exc:  # timeouts and the like: membership is unknown
        return GroupInfo(error=f"{type(exc).__name__}: {exc}")
    members = []
    for m in desc.members or []:
        parts: tuple[str, ...] = ()
        if m.assignment is not None:
            parts = tuple(f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions)
        members.append(Member(m.member_id, m.client_id, m.host, parts))
    state = getattr(desc.state, "name", None) or str(desc.state)
    return GroupInfo(state=state, members=tuple(members))


def read_states(
    conf: Mapping[str, Any],
    group: str,
    topics: Sequence[str],
    partitions: Sequence[int] = (),
    timeout: float = 10.0,
) -> list[PartitionState]:
    """Watermarks and committed offsets of ``topics`` (all partitions, or ``partitions``)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

    admin = _admin(conf)
    # Listing every topic (not naming one) never auto-creates a topic.
    metadata = admin.list_topics(timeout=timeout)
    wanted: list[TopicPartition] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise ReplayError(f"topic {topic!r} does not exist")
        available = sorted(meta.partitions)
        chosen = list(partitions) or available
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ReplayError(
                f"topic {topic!r} has partitions {available[0]}..{available[-1]}; "
                f"no partition {', '.join(map(str, missing))}"
            )
        wanted += [TopicPartition(topic, p) for p in sorted(set(chosen))]
    try:
        request = ConsumerGroupTopicPartitions(group, wanted)
        result = admin.list_consumer_group_offsets([request], request_timeout=timeout)
        listed = result[group].result(timeout + 5).topic_partitions
    except KafkaException as exc:
        raise ReplayError(
            f"cannot read committed offsets of {group}: {_kafka_error(exc)}"
        ) from None
    committed: dict[TopicPartitionKey, int | None] = {}
    for tp in listed:
        if tp.error is not None:
            raise ReplayError(
                f"cannot read the committed offset of {group} on {tp.topic}[{tp.partition}]: "
                f"{tp.error}"
            )
        committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    consumer = _probe_consumer(conf)
    try:
        states = []
        for tp in wanted:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            except KafkaException as exc:
                raise ReplayError(
                    f"cannot read watermarks of {tp.topic}[{tp.partition}]: {_kafka_error(exc)}"
                ) from None
            states.append(
                PartitionState(
                    tp.topic, tp.partition, low, high, committed.get((tp.topic, tp.partition))
                )
            )
    finally:
        consumer.close()
    return states


def _read_records(
    consumer: Any,
    starts: Mapping[TopicPartitionKey, int],
    done: Any,
    deadline: float,
) -> None:
    """Read each partition from ``starts`` until ``done(key, offset, ts)`` or its end."""
    from confluent_kafka import KafkaError, TopicPartition

    pending = set(starts)
    if not pending:
        return
    assigned = [TopicPartition(t, p, starts[(t, p)]) for t, p in sorted(pending)]
    consumer.assign(assigned)
    try:
        while pending:
            if time.monotonic() > deadline:
                raise ReplayError(
                    "timed out reading record timestamps of "
                    + ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            key = (msg.topic(), msg.partition())
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(key)
                    continue
                raise ReplayError(f"cannot read {key[0]}[{key[1]}]: {msg.error()}")
            if key in pending and done(key, msg.offset(), msg.timestamp()[1]):
                pending.discard(key)
                consumer.pause([TopicPartition(key[0], key[1])])
    finally:
        consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in assigned])
        consumer.unassign()


def lookup_times(
    conf: Mapping[str, Any],
    states: Sequence[PartitionState],
    ts_ms: int,
    timeout: float = 10.0,
    *,
    scan_for_times: bool = False,
) -> dict[TopicPartitionKey, int | None]:
    """Per partition, the first offset whose record is at or after ``ts_ms``; None if none.

    Uses ``offsets_for_times`` (the broker's time index). With ``scan_for_times`` (brokers
    without a time index, like the dev broker: `BrokerProfile.timestamp_index` is false),
    where that says "none" although the partition's last record is at or after the time, the
    partition is scanned from its low watermark.
    """
    from confluent_kafka import KafkaException, TopicPartition

    result: dict[TopicPartitionKey, int | None] = {}
    nonempty = [s for s in states if s.high > s.low]
    for s in states:
        if s.high <= s.low:
            result[s.key] = None
    if not nonempty:
        return result
    consumer = _probe_consumer(conf, **{"enable.partition.eof": True})
    deadline = time.monotonic() + max(timeout, 1.0) * 3
    try:
        try:
            found = consumer.offsets_for_times(
                [TopicPartition(s.topic, s.partition, ts_ms) for s in nonempty], timeout=timeout
            )
        except KafkaException as exc:
            raise ReplayError(f"cannot look up offsets by time: {_kafka_error(exc)}") from None
        doubtful: dict[TopicPartitionKey, int] = {}
        by_key = {s.key: s for s in nonempty}
        for tp in found:
            key = (tp.topic, tp.partition)
            if tp.error is not None:
                raise ReplayError(f"cannot look up {tp.topic}[{tp.partition}] by time: {tp.error}")
            if tp.offset >= 0:
                result[key] = tp.offset
            else:
                result[key] = None
                if scan_for_times:
                    doubtful[key] = by_key[key].high - 1
        # "None at or after the time": check the last record, which must then be older.
        last_ts: dict[TopicPartitionKey, int] = {}

        def take_last(key: TopicPartitionKey, offset: int, ts: int) -> bool:
            last_ts[key] = ts
            return offset >= doubtful[key]

        _read_records(consumer, doubtful, take_last, deadline)
        rescan = {k: by_key[k].low for k, ts in last_ts.items() if ts >= ts_ms}

        def find_first(key: TopicPartitionKey, offset: int, ts: int) -> bool:
            if ts >= ts_ms:
                result[key] = offset
                return True
            return False

        _read_records(consumer, rescan, find_first, deadline)
    finally:
        consumer.close()
    return result


@dataclass
class CommitOutcome:
    """What applying a plan did: the method used, and partitions that failed."""

    method: str  # "admin" (AlterConsumerGroupOffsets) or "member" (committed as a member)
    failed: dict[TopicPartitionKey, str] = field(default_factory=dict)
    note: str = ""


def alter_offsets(
    conf: Mapping[str, Any],
    group: str,
    offsets: Mapping[TopicPartitionKey, int],
    timeout: float = 10.0,
) -> dict[TopicPartitionKey, Any]:
    """AlterConsumerGroupOffsets; returns the KafkaError of each partition that failed."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    )
    try:
        admin = _admin(conf)
        futures = admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        done = futures[group].result(timeout + 5).topic_partitions
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        return dict.fromkeys(offsets, err)
    return {(tp.topic, tp.partition): tp.error for tp in done if tp.error is not None}


def commit_as_member(
    conf: Mapping[str, Any],
    group: str,
    offsets: Mapping[TopicPartitionKey, int],
    timeout: float = 30.0,
) -> None:
    """Commit by joining the group; only when no other member is active (checked by assignment).

    The consumer subscribes to the topics and must be assigned every partition being changed;
    otherwise other members are active and nothing is committed (ReplayError).
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            **conf,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Short: the dev broker delays a rejoin by about the session timeout.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    try:
        consumer.subscribe(sorted({t for t, _ in offsets}))
        deadline = time.monotonic() + timeout
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"could not join group {group} within {timeout:.0f}s to commit its offsets"
                )
            consumer.poll(0.1)  # records are ignored; nothing is committed by polling
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        others = sorted(set(offsets) - assigned)
        if others:
            raise ReplayError(
                f"group {group} has other active members: they hold "
                + ", ".join(f"{t}[{p}]" for t, p in others)
                + ". Stop them and re-run; nothing was changed."
            )
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise ReplayError(
                f"committing as a member of {group} failed: {_kafka_error(exc)}"
            ) from None
    finally:
        consumer.close()


def apply_plan(
    conf: Mapping[str, Any],
    group: str,
    plans: Sequence[PartitionPlan],
    info: GroupInfo,
    timeout: float = 30.0,
    *,
    commit_by_joining: bool = False,
) -> CommitOutcome:
    """Commit the plan's new offsets for ``group``.

    AlterConsumerGroupOffsets. With ``commit_by_joining`` (the dev broker:
    `BrokerProfile.commit_by_joining`), when the broker rejects it with UNKNOWN_MEMBER_ID for
    every partition and the group is not known to have members (the mock does this for any
    group that ever had members), the offsets are committed by joining the group instead.
    """
    offsets = offsets_to_commit(plans)
    if not offsets:
        return CommitOutcome("admin")
    failed = alter_offsets(conf, group, offsets, timeout)
    if not failed:
        return CommitOutcome("admin")
    codes = {k: getattr(e, "code", lambda: None)() for k, e in failed.items()}
    if commit_by_joining and may_commit_by_joining(offsets, codes, info):
        commit_as_member(conf, group, offsets, timeout)
        return CommitOutcome(
            "member",
            note=(
                "the broker rejected the admin offset change (UNKNOWN_MEMBER_ID), so the "
                f"offsets were committed by briefly joining group {group}"
            ),
        )
    return CommitOutcome("admin", failed={k: str(v) for k, v in failed.items()})


def committed_offsets(
    conf: Mapping[str, Any],
    group: str,
    keys: Iterable[TopicPartitionKey],
    timeout: float = 10.0,
) -> dict[TopicPartitionKey, int | None]:
    """The group's committed offsets of ``keys`` (None where there is none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in sorted(keys)])
    admin = _admin(conf)
    futures = admin.list_consumer_group_offsets([request], request_timeout=timeout)
    return {
        (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
        for tp in futures[group].result(timeout + 5).topic_partitions
    }
