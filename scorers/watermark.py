"""When an event may be scored: an arrival-time watermark over every input partition.

Two clocks (docs/replay-determinism.md has the reasoning):

- **event time** ``ts``: when the interaction happened (the event's ``timestamp``). It says
  what "earlier" means for the look-ups.
- **arrival time** ``kt``: the Kafka record timestamp (CreateTime set by the producer, or
  LogAppendTime), which the log stores with the record, so every replay reads the same value.

**Visibility.** An interaction ``r`` is in the look-ups of event ``e`` when ``r.ts < e.ts`` and
``r.kt <= e.kt + H``, the horizon ``H`` (``LEARNSTREAM_SCORE__WATERMARK_HORIZON_MS``): every
earlier interaction that reached Kafka no later than ``H`` after the event did. That set
depends only on what the log holds, so the first pass and any replay compute the same one,
whatever the processing order, the consumer's lag per partition or an LLM's latency.

**Completeness** (this module). Event ``e`` is released for scoring once

1. every assigned partition has *passed* arrival time ``K = e.kt + H``: it has delivered a
   record that arrived at ``K + margin`` or later (rule a), or an end-offset check made at
   ``K + margin`` or later found everything up to the end already read (rule b: a caught-up,
   idle partition); the margin (``WATERMARK_MARGIN_MS``) covers the delay between a
   producer's CreateTime and the broker's append, and timestamp disorder within a partition;
2. and no held event that could be visible to it (``ts`` earlier, ``kt <= K``) still waits.

Released events come out in ``(ts, event_id)`` order, so those of one release that see each
other are scored in event-time order. An event held longer than ``WATERMARK_MAX_HOLD_MS``
(a partition that cannot be read) is released anyway, with every held event not later than
it, flagged ``forced``: its look-ups may then miss something, and a replay may differ.

**Lateness.** The watermark at arrival time ``x`` is the latest event time among the events
that arrived more than ``H`` before ``x``. An event whose time is behind the watermark at its
own arrival is *late*: some event later than it was scored without it (by the visibility
rule, on the first pass and on every replay alike). A late event is scored like any other,
against everything visible to it, and flagged ``late``. An event that arrives after an event
that should have seen it was already released (a producer delay or timestamp disorder beyond
the margin) is flagged ``missed``; only these (and forced releases) can make a replay differ.

The buffer is pure: no Kafka, no clock of its own (``now`` is passed in, wall-clock seconds).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

INF = math.inf


@dataclass
class Held(Generic[T]):
    """One event waiting for the watermark, and what its release found."""

    item: T
    partition: Hashable
    ts: float  # event time, epoch seconds
    key: str  # the event id: ties in event time are broken by it
    kt: float  # arrival time, epoch seconds
    until: float  # kt + horizon: the latest arrival its look-ups can see
    received: float  # wall clock when it was read
    late: bool = False
    forced: bool = False
    missed: bool = False  # it arrived after an event that should have seen it was released
    released: float | None = None  # wall clock when it was released

    @property
    def order(self) -> tuple[float, str]:
        """The release order: event time, then event id."""
        return (self.ts, self.key)


@dataclass
class _Partition:
    next_offset: int | None = None  # one past the highest offset read
    start: int | None = None  # where reading began (the committed offset), if known
    max_kt: float = -INF  # the latest arrival time read
    caught_up_at: float = -INF  # everything appended before this wall time has been read

    def read_up_to(self) -> int | None:
        if self.next_offset is None:
            return self.start
        if self.start is None:
            return self.next_offset
        return max(self.next_offset, self.start)

    def passed(self) -> float:
        """The arrival time up to which this partition has delivered everything, plus margin."""
        return max(self.max_kt, self.caught_up_at)


class _Series:
    """(arrival, event time) pairs sorted by arrival, for the watermark and miss checks.

    Keeps at most ``keep`` pairs; older ones fold into one (latest arrival, latest time) pair,
    which keeps answers for arrival bounds above it exact.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.kts: list[float] = []
        self.tss: list[float] = []
        self._prefix: list[float] = []  # running max of tss; valid up to _valid
        self._valid = 0
        self.folded_kt = -INF
        self.folded_ts = -INF

    def __len__(self) -> int:
        return len(self.kts)

    def add(self, kt: float, ts: float) -> None:
        i = bisect.bisect_right(self.kts, kt)
        self.kts.insert(i, kt)
        self.tss.insert(i, ts)
        self._valid = min(self._valid, i)
        if len(self.kts) > self.keep:
            drop = len(self.kts) - self.keep // 2
            self.folded_kt = max(self.folded_kt, self.kts[drop - 1])
            self.folded_ts = max(self.folded_ts, *self.tss[:drop])
            del self.kts[:drop], self.tss[:drop]
            self._valid = 0

    def max_ts_before(self, kt: float) -> float:
        """The latest event time among pairs that arrived strictly before ``kt``."""
        i = bisect.bisect_left(self.kts, kt)
        best = self.folded_ts if self.folded_kt < kt else -INF
        if i == 0:
            return best
        if self._valid < i:
            prefix = self._prefix
            del prefix[self._valid :]
            run = prefix[-1] if prefix else -INF
            for ts in self.tss[self._valid : len(self.tss)]:
                run = max(run, ts)
                prefix.append(run)
            self._valid = len(self.tss)
        return max(best, self._prefix[i - 1])

    def max_ts_from(self, kt: float) -> float:
        """The latest event time among pairs that arrived at ``kt`` or later."""
        i = bisect.bisect_left(self.kts, kt)
        return max(self.tss[i:], default=-INF)


class EventTimeBuffer(Generic[T]):
    """Holds look-up events until the watermark says their look-ups are complete.

    ``horizon_s``, ``margin_s`` and ``max_hold_s`` are ``H``, the margin and the bounded wait
    of the module docstring. Feed it every record read (`read`), the events to hold (`hold`),
    where reading began on partitions with nothing read yet (`set_start`) and end offsets
    (`observe_ends`, for the partitions `waiting_on` names); `release` returns what may be
    scored now. `assign` sets the partitions to wait for; `clear` drops everything held (on a
    rebalance the consumer re-reads from the committed offsets).
    """

    def __init__(
        self, horizon_s: float, margin_s: float, max_hold_s: float, *, keep: int = 200_000
    ) -> None:
        if horizon_s < 0 or margin_s < 0 or max_hold_s <= 0:
            raise ValueError("horizon and margin must be >= 0 and the max hold > 0")
        self.horizon_s = horizon_s
        self.margin_s = margin_s
        self.max_hold_s = max_hold_s
        self._parts: dict[Hashable, _Partition] = {}
        self._held: list[Held[T]] = []
        self._arrivals = _Series(keep)  # every held event: for the lateness watermark
        self._released = _Series(keep)  # every released event: to detect misses
        self._released_keys: dict[str, None] = {}
        self._keep = keep
        self._released_until = -INF  # the latest `until` of any released event

    # --- what the consumer tells it ----------------------------------------------------------

    def assign(self, partitions: Iterable[Hashable]) -> list[Held[T]]:
        """Wait for exactly these partitions; returns held events of partitions now gone."""
        wanted = set(partitions)
        for p in list(self._parts):
            if p not in wanted:
                del self._parts[p]
        for p in wanted:
            self._parts.setdefault(p, _Partition())
        gone = [h for h in self._held if h.partition not in wanted]
        if gone:
            self._held = [h for h in self._held if h.partition in wanted]
        return gone

    @property
    def partitions(self) -> set[Hashable]:
        """The partitions waited for."""
        return set(self._parts)

    def read(self, partition: Hashable, offset: int, kt: float | None) -> None:
        """Any record read from ``partition`` (valid or not, held or not)."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        if part.next_offset is None or offset + 1 > part.next_offset:
            part.next_offset = offset + 1
        if kt is not None and kt > part.max_kt:
            part.max_kt = kt

    def set_start(self, partition: Hashable, offset: int) -> None:
        """Reading of ``partition`` began at ``offset`` (its committed offset)."""
        part = self._parts.get(partition)
        if part is not None and (part.start is None or offset > part.start):
            part.start = offset

    def needs_start(self) -> list[Hashable]:
        """Partitions with nothing read and no known start (an end check cannot pass them)."""
        return [p for p, s in self._parts.items() if s.read_up_to() is None]

    def observe_ends(self, ends: Mapping[Any, int], at: float) -> None:
        """End offsets asked for at wall time ``at``: caught-up partitions pass up to ``at``."""
        for p, end in ends.items():
            part = self._parts.get(p)
            if part is None:
                continue
            read = part.read_up_to()
            if (read is not None and read >= end) or end <= 0:
                part.caught_up_at = max(part.caught_up_at, at)

    def hold(
        self,
        item: T,
        partition: Hashable,
        *,
        ts: float,
        key: str,
        kt: float | None,
        now: float,
    ) -> Held[T]:
        """Hold a look-up event (call `read` for its record too). Without an arrival time
        (no Kafka timestamp) it counts as arriving now."""
        arrival = now if kt is None else kt
        held = Held(item, partition, ts, key, arrival, arrival + self.horizon_s, now)
        if arrival <= self._released_until and key not in self._released_keys:
            # Did an already released event need it? (later in event time, could see it)
            held.missed = self._released.max_ts_from(arrival - self.horizon_s) > ts
        self._arrivals.add(arrival, ts)
        self._held.append(held)
        return held

    # --- what it tells the consumer ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._held)

    def bound(self) -> float:
        """Every assigned partition has delivered all records that arrived up to this time."""
        if not self._parts:
            return -INF
        return min(p.passed() for p in self._parts.values()) - self.margin_s

    def next_due(self) -> float | None:
        """The earliest ``until`` among held events that the partitions have not passed yet
        (None when there is none): the next arrival time worth passing."""
        bound = self.bound()
        return min((h.until for h in self._held if h.until > bound), default=None)

    def waiting_on(self, now: float) -> list[Hashable]:
        """Partitions that an end-offset check now could let pass the next held event."""
        due = self.next_due()
        if due is None or now < due + self.margin_s:
            return []
        return [p for p, s in self._parts.items() if s.passed() < due + self.margin_s]

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest-held event has waited (0 when nothing is held)."""
        return max((now - h.received for h in self._held), default=0.0)

    def release(self, now: float) -> list[Held[T]]:
        """The held events that may be scored now, in ``(ts, event_id)`` order."""
        if not self._held:
            return []
        bound = self.bound()
        overdue = [h for h in self._held if now - h.received >= self.max_hold_s]
        due = min(h.until for h in self._held)
        if due > bound and not overdue:
            return []
        force_to = max((h.order for h in overdue), default=None)
        out: list[Held[T]] = []
        rest: list[Held[T]] = []
        blocked_kt = INF  # the earliest arrival among held events that must wait
        for h in sorted(self._held, key=lambda x: x.order):
            if force_to is not None and h.order <= force_to:
                h.forced = h.until > bound or blocked_kt <= h.until
                out.append(h)
            elif h.until <= bound and blocked_kt > h.until:
                out.append(h)
            else:
                blocked_kt = min(blocked_kt, h.kt)
                rest.append(h)
        self._held = rest
        for h in out:
            # Late: an event later than it arrived more than H before it (and was scored
            # without it). Everything that arrived before h.kt - H has been read by now.
            h.late = self._arrivals.max_ts_before(h.kt - self.horizon_s) > h.ts
            h.released = now
            self._released.add(h.kt, h.ts)
            self._released_keys[h.key] = None
            self._released_until = max(self._released_until, h.until)
        while len(self._released_keys) > self._keep:
            del self._released_keys[next(iter(self._released_keys))]
        return out

    def clear(self) -> list[Held[T]]:
        """Drop every held event and what is known of the partitions (a rebalance: reading
        starts again from the committed offsets); returns the dropped events."""
        dropped, self._held = self._held, []
        self._parts = {p: _Partition() for p in self._parts}
        return dropped
