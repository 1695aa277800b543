"""The pure part of ``learnstream replay``: from what the broker said to what to change.

No broker and no client library here: the target the options name, the new offset of each
partition from its watermarks, committed offset and (for a time target) the first offset at
or after the time; the dry-run table; whether to refuse (active members); which offsets to
commit, whether the dev broker's commit-by-joining fallback applies, and whether the broker
ended up with what was asked. `learnstream.replay` does the broker I/O around it.

Partitions a shift cannot move: an *empty* partition (no records) without a committed offset
is left as it is, and the table says so (the group has nothing there to re-read or skip); a
partition with records but without a committed offset is an error naming it (where the group
would start depends on its consumers' ``auto.offset.reset``), so the plan is refused unless
``--partition`` leaves it out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

OFFSET_INVALID = -1001  # librdkafka: no committed offset
UNKNOWN_MEMBER_ID = 25  # Kafka error code of an offset change for a group with members

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
    left: bool = False  # deliberately left as it is (not an error): see `leaves_alone`

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
        if leaves_alone(state, target):
            return None, LEFT_NOTE
        return None, (
            f"no committed offset to shift ({state.high - state.low} records; leave the "
            "partition out with --partition, or use --to-start/--to-offset/--to-time)"
        )
    return _clamp(state, state.committed + target.value)


LEFT_NOTE = "empty, nothing committed: left as it is"


def leaves_alone(state: PartitionState, target: Target) -> bool:
    """Whether the plan leaves the partition as it is: a shift of an empty, uncommitted one."""
    return target.kind == "shift" and state.committed is None and state.high <= state.low


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
        plans.append(PartitionPlan(state, offset, note, left=leaves_alone(state, target)))
    return plans


def plan_errors(plans: Sequence[PartitionPlan]) -> list[str]:
    """One line per partition whose new offset could not be computed."""
    return [
        f"{p.state.topic}[{p.state.partition}]: {p.note}"
        for p in plans
        if p.new is None and not p.left
    ]


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
    left = sum(1 for p in plans if p.left)
    out.append(
        f"total: {len(plans)} partitions, {changing} change"
        + (f", {left} left as they are (empty, nothing committed)" if left else "")
        + f"; lag now {lag_now}, after {lag_after}; {reprocess} records to re-process, "
        f"{skipped} skipped"
        + (f"; {without - left} without a committed offset" if without - left else "")
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


# --- committing -----------------------------------------------------------------------------


def offsets_to_commit(plans: Iterable[PartitionPlan]) -> dict[TopicPartitionKey, int]:
    """The new offset of every partition that has one."""
    return {p.state.key: p.new for p in plans if p.new is not None}


def may_commit_by_joining(
    offsets: Collection[TopicPartitionKey],
    failed_codes: Mapping[TopicPartitionKey, int | None],
    info: GroupInfo,
) -> bool:
    """Whether a refused admin offset change may be done by joining the group instead.

    Only when the broker refused every partition with UNKNOWN_MEMBER_ID (what the dev broker
    answers for any group that ever had members) and the group is not known to have members.
    """
    return (
        set(failed_codes) == set(offsets)
        and set(failed_codes.values()) == {UNKNOWN_MEMBER_ID}
        and info.may_be_empty
    )


def offset_mismatches(
    wanted: Mapping[TopicPartitionKey, int | None], now: Mapping[TopicPartitionKey, int | None]
) -> list[str]:
    """One ``t[p] is X, not Y`` per partition whose committed offset is not the wanted one."""
    return [
        f"{t}[{p}] is {now.get((t, p))}, not {want}"
        for (t, p), want in sorted(wanted.items())
        if now.get((t, p)) != want
    ]
