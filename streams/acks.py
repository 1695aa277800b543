"""Acknowledging a partition's records in offset order, whatever order they finish in.

The `score` agent finishes records out of offset order: it holds look-up events for the
watermark while the events after them are scored, and acks a batch's dead letters before its
valid events, which are scored next. Faust's commit (``Consumer._new_offset``) takes the
first run of consecutive acked offsets, but it checks that the run starts at the committed
offset only loosely: with the committed offset ``C`` and offset ``C`` held, acks of ``C + 1``
onwards commit past ``C`` (``min(acked) - C > 1`` is false), and with no committed offset (or
``C == 0``) it does not check at all. A rebalance or a crash then re-reads from after the
unfinished event, which is never scored. So the agent acks through `InOrderAcks`: every record
read is `begin`-ed, and a finished one is acked only once every earlier record of its
partition has finished; Faust sees acks in offset order only.

Pure bookkeeping: no Faust, no Kafka; the items are whatever the caller acks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrderAcks(Generic[T]):
    """Per partition: the offsets begun and not finished, and the finished items waiting for
    an earlier one."""

    def __init__(self) -> None:
        self._held: dict[Hashable, dict[int, T]] = {}
        self._waiting: dict[Hashable, list[tuple[int, int, T]]] = {}
        self._seq = itertools.count()

    def begin(self, partition: Hashable, offset: int, item: T) -> None:
        """``item`` (at ``offset``) was read: nothing later on its partition is acked before it
        is `done` (or forgotten)."""
        self._held.setdefault(partition, {})[offset] = item

    def done(self, partition: Hashable, offset: int, item: T) -> list[T]:
        """``item`` is finished; returns the items that may be acked now, in offset order
        (``item`` among them unless an earlier offset of its partition is not done yet)."""
        held = self._held.get(partition)
        if held is not None and held.get(offset) is item:
            del held[offset]
        heapq.heappush(self._waiting.setdefault(partition, []), (offset, next(self._seq), item))
        return self._ackable(partition)

    def forget(self, partition: Hashable, offset: int, item: T) -> list[T]:
        """``item`` will not be acked (it is read again after a rebalance); returns the items
        that may be acked now that it no longer holds its partition back."""
        held = self._held.get(partition)
        if held is not None and held.get(offset) is item:
            del held[offset]
        return self._ackable(partition)

    def _ackable(self, partition: Hashable) -> list[T]:
        waiting = self._waiting.get(partition)
        if not waiting:
            return []
        held = self._held.get(partition)
        bound = min(held) if held else None
        out: list[T] = []
        while waiting and (bound is None or waiting[0][0] < bound):
            out.append(heapq.heappop(waiting)[2])
        return out

    def waiting(self) -> int:
        """Finished items not acked yet (behind an unfinished offset)."""
        return sum(len(w) for w in self._waiting.values())

    def drop(self, partitions: Iterable[Hashable]) -> int:
        """Forget ``partitions`` (no longer assigned); how many waiting items were dropped."""
        n = 0
        for p in partitions:
            self._held.pop(p, None)
            n += len(self._waiting.pop(p, []))
        return n

    def clear(self) -> int:
        """Forget everything (a rebalance: the partitions are read again from the committed
        offsets); how many waiting items were dropped."""
        return self.drop(list({*self._held, *self._waiting}))


class OffsetGaps:
    """Per partition, the next offset the agent should see; says when records were skipped.

    Faust delivers a partition's records in offset order, but around a rebalance its stream
    can drop records that were fetched (a generation change, a suspended flow) without reading
    them again, and its commit can then pass them (see the module docstring). A record whose
    offset is past the next one expected is such a gap; the agent reads the partition again
    from the expected offset. The start of a partition in a generation is its committed offset
    when the consumer knows it, else its first record. A gap seen again after reading again is
    real (control records of a transactional producer, a compacted topic) and is accepted.
    """

    def __init__(self) -> None:
        self._expected: dict[Hashable, int] = {}
        self._generation: object = None
        self._reread: set[tuple[Hashable, int]] = set()

    def new_generation(self, generation: object) -> None:
        """A rebalance: every partition starts again."""
        if generation != self._generation:
            self._generation = generation
            self._expected.clear()

    def observe(self, partition: Hashable, offset: int, committed: int | None) -> int | None:
        """A record at ``offset``: the offset to read again from when records before it were
        skipped (once per gap), else None."""
        expected = self._expected.get(partition)
        if expected is None:
            expected = committed if committed is not None and committed >= 0 else offset
        if offset > expected and (partition, expected) not in self._reread:
            self._reread.add((partition, expected))
            self._expected[partition] = expected
            return expected
        if offset >= expected:
            self._expected[partition] = offset + 1
        return None
