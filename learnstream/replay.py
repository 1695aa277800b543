"""Replaying topics: moving a consumer group's committed offsets (``learnstream replay``).

Every learnstream consumer group can be rewound or fast-forwarded: the Faust worker's
(its id is ``LEARNSTREAM_WORKER__APP_ID``, default ``learnstream``), the PostgreSQL sink's
(``learnstream-sink``) and the trainer's (``learnstream-trainer``). Because every sink is an
upsert keyed by a deterministic id, re-processing never duplicates.

The pure part (new offsets from watermarks, committed offsets and timestamps; the dry-run
table; whether to refuse) has no broker dependency; the functions after it talk to the broker
through confluent-kafka (imported inside them).

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
they run only under the mock's `learnstream.brokerprofile.BrokerProfile`:

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

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

OFFSET_INVALID = -1001  # librdkafka: no committed offset

TargetKind = Literal["start", "end", "offset", "time", "shift"]

TopicPartitionKey = tuple[str, int]


class ReplayError(RuntimeError):
    """A replay could not be planned or applied; the message says why."""


# --- what to reset to -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to move the group: start, end, an offset, a time (unix ms) or a shift."""

    kind: TargetKind
    value: int = 0

    def describe(self) -> str:
        """A short human description, e.g. ``to offset 5`` or ``shifted by -10``."""
        if self.kind in ("start", "end"):
            return f"to the {self.kind}"
        if self.kind == "offset":
            return f"to offset {self.value}"
        if self.kind == "time":
            when = datetime.fromtimestamp(self.value / 1000, UTC).isoformat()
            return f"to the first record at or after {when} ({self.value} ms)"
        return f"shifted by {self.value:+d}"


def parse_time(text: str) -> int:
    """Unix milliseconds from ISO 8601 (no zone = UTC) or from a plain integer of unix ms."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither ISO 8601 (e.g. 2026-11-02T09:14:05Z) nor unix milliseconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def choose_target(
    *,
    to_start: bool = False,
    to_end: bool = False,
    to_offset: int | None = None,
    to_time: str | None = None,
    shift_by: int | None = None,
) -> Target:
    """The one target the options name; ValueError when none or several are given."""
    chosen: list[Target] = []
    if to_start:
        chosen.append(Target("start"))
    if to_end:
        chosen.append(Target("end"))
    if to_offset is not None:
        if to_offset < 0:
            raise ValueError("--to-offset must be 0 or more")
        chosen.append(Target("offset", to_offset))
    if to_time is not None:
        chosen.append(Target("time", parse_time(to_time)))
    if shift_by is not None:
        chosen.append(Target("shift", shift_by))
    if len(chosen) != 1:
        raise ValueError(
            "give exactly one of --to-start, --to-end, --to-offset, --to-time, --shift-by"
            + (f" (got {len(chosen)})" if chosen else "")
        )
    return chosen[0]


# --- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionState:
    """One partition as the broker sees it: watermarks and the group's committed offset."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None  # None: the group has no committed offset here

    @property
    def key(self) -> TopicPartitionKey:
        """(topic, partition)."""
        return (self.topic, self.partition)


@dataclass(frozen=True)
class PartitionPlan:
    """The new offset of one partition (None when it cannot be computed), with a note."""

    state: PartitionState
    new: int | None
    note: str = ""

    @property
    def lag_now(self) -> int | None:
        """High watermark - committed offset; None without a committed offset."""
        if self.state.committed is None:
            return None
        return max(0, self.state.high - self.state.committed)

    @property
    def lag_after(self) -> int | None:
        """The lag the new offset creates: high watermark - new offset."""
        return None if self.new is None else max(0, self.state.high - self.new)

    @property
    def changes(self) -> bool:
        """Whether the committed offset would change."""
        return self.new is not None and self.new != self.state.committed


def _clamp(state: PartitionState, offset: int) -> tuple[int, str]:
    if offset < state.low:
        return state.low, f"clamped to the low watermark {state.low}"
    if offset > state.high:
        return state.high, f"clamped to the high watermark {state.high}"
    return offset, ""


def new_offset(
    state: PartitionState, target: Target, time_offset: int | None = None
) -> tuple[int | None, str]:
    """The new offset of one partition and a note; (None, why) when there is none.

    ``time_offset`` is, for a time target, the first offset whose record is at or after the
    time, or None when there is no such record (the group then moves to the end).
    Offsets outside the watermarks are clamped to them (as Kafka's tools do).
    """
    if target.kind == "start":
        return state.low, ""
    if target.kind == "end":
        return state.high, ""
    if target.kind == "offset":
        return _clamp(state, target.value)
    if target.kind == "time":
        if time_offset is None or time_offset < 0:
            return state.high, "no record at or after the time: the end"
        return _clamp(state, time_offset)
    if state.committed is None:
        return None, "no committed offset to shift"
    return _clamp(state, state.committed + target.value)


def plan_resets(
    states: Iterable[PartitionState],
    target: Target,
    time_offsets: Mapping[TopicPartitionKey, int | None] | None = None,
) -> list[PartitionPlan]:
    """A plan per partition, in topic and partition order."""
    plans = []
    for state in sorted(states, key=lambda s: s.key):
        tof = (time_offsets or {}).get(state.key)
        offset, note = new_offset(state, target, tof)
        plans.append(PartitionPlan(state, offset, note))
    return plans


def plan_errors(plans: Sequence[PartitionPlan]) -> list[str]:
    """One line per partition whose new offset could not be computed."""
    return [f"{p.state.topic}[{p.state.partition}]: {p.note}" for p in plans if p.new is None]


def first_at_or_after(records: Iterable[tuple[int, int]], ts_ms: int) -> int | None:
    """The first offset of (offset, timestamp ms) records whose timestamp is >= ``ts_ms``."""
    for offset, ts in records:
        if ts >= ts_ms:
            return offset
    return None


# --- output ---------------------------------------------------------------------------------


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_table(group: str, target: Target, plans: Sequence[PartitionPlan]) -> str:
    """The dry-run table: per partition the watermarks, current, new offset and lag; totals."""
    header = ("TOPIC", "PARTITION", "LOW", "HIGH", "CURRENT", "NEW", "LAG-NOW", "LAG-AFTER")
    rows = [
        (
            p.state.topic,
            str(p.state.partition),
            str(p.state.low),
            str(p.state.high),
            _num(p.state.committed),
            _num(p.new),
            _num(p.lag_now),
            _num(p.lag_after),
        )
        for p in plans
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str], note: str = "") -> str:
        first = cells[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return f"{first}  {rest}" + (f"  {note}" if note else "")

    out = [f"group {group}: reset {target.describe()}", line(header)]
    out += [line(row, p.note) for row, p in zip(rows, plans, strict=True)]
    lag_now = sum(p.lag_now or 0 for p in plans)
    lag_after = sum(p.lag_after or 0 for p in plans)
    without = sum(1 for p in plans if p.state.committed is None)
    reprocess = sum(
        max(0, p.state.committed - p.new)
        for p in plans
        if p.state.committed is not None and p.new is not None
    )
    skipped = sum(
        max(0, p.new - p.state.committed)
        for p in plans
        if p.state.committed is not None and p.new is not None
    )
    changing = sum(1 for p in plans if p.changes)
    out.append(
        f"total: {len(plans)} partitions, {changing} change; lag now {lag_now}, "
        f"after {lag_after}; {reprocess} records to re-process, {skipped} skipped"
        + (f"; {without} without a committed offset" if without else "")
    )
    return "\n".join(out)


# --- whether to refuse ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """An active member of a consumer group."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[str, ...] = ()

    def describe(self) -> str:
        """``member M (client C, host H) holding t[0], t[1]``."""
        held = f" holding {', '.join(self.partitions)}" if self.partitions else ""
        return f"member {self.member_id} (client {self.client_id}, host {self.host}){held}"


@dataclass(frozen=True)
class GroupInfo:
    """What the broker said about a group: its state and members, or why it could not say."""

    state: str | None = None
    members: tuple[Member, ...] = ()
    error: str | None = None  # set when the broker cannot describe groups

    @property
    def may_be_empty(self) -> bool:
        """True unless the broker listed members (unknown membership counts as maybe empty)."""
        return not self.members


def refusal(group: str, info: GroupInfo, force: bool) -> str | None:
    """Why changing the group's offsets must not go ahead, or None when it may.

    Refuses while the group has active members, and when membership cannot be checked,
    unless ``force``.
    """
    if force:
        return None
    if info.error is not None:
        return (
            f"cannot check whether group {group} has active members: the broker cannot "
            f"describe consumer groups ({info.error}). Stop the group's consumers, then "
            "re-run with --force."
        )
    if info.members:
        names = "; ".join(m.describe() for m in info.members)
        return (
            f"group {group} has {len(info.members)} active member(s): {names}. Stop them (or "
            "wait until they leave the group) and re-run; --force skips this check, but "
            "Kafka and Redpanda reject offset changes for a group with members anyway."
        )
    return None


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


UNKNOWN_MEMBER_ID = 25


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
    offsets = {p.state.key: p.new for p in plans if p.new is not None}
    if not offsets:
        return CommitOutcome("admin")
    failed = alter_offsets(conf, group, offsets, timeout)
    if not failed:
        return CommitOutcome("admin")
    codes = {getattr(e, "code", lambda: None)() for e in failed.values()}
    if (
        commit_by_joining
        and set(failed) == set(offsets)
        and codes == {UNKNOWN_MEMBER_ID}
        and info.may_be_empty
    ):
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
