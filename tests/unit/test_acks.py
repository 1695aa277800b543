"""Acks in offset order (`streams.acks.InOrderAcks`), and why the `score` agent needs them:
Faust's commit offset, computed from the acks it saw, can pass an offset not finished yet."""

from __future__ import annotations

import random
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.acks import InOrderAcks

P = ("telemetry.aidb", 0)
Q = ("telemetry.aidb", 1)


def test_a_finished_record_waits_for_every_earlier_one_of_its_partition() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    p = ["p0", "p1", "p2", "p3"]
    for offset, item in enumerate(p):
        acks.begin(P, offset, item)
    acks.begin(Q, 0, "q0")
    assert acks.done(P, 2, p[2]) == []
    assert acks.done(P, 3, p[3]) == []
    assert acks.done(Q, 0, "q0") == ["q0"]  # another partition is not held back
    assert acks.waiting() == 2
    assert acks.done(P, 0, p[0]) == ["p0"]
    assert acks.done(P, 1, p[1]) == ["p1", "p2", "p3"]
    assert acks.waiting() == 0


def test_a_forgotten_record_no_longer_holds_its_partition_back() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    acks.begin(P, 5, "held")
    acks.begin(P, 6, "next")
    assert acks.done(P, 6, "next") == []
    assert acks.forget(P, 5, "held") == ["next"]


def test_a_record_read_again_is_not_released_by_its_earlier_copy() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    acks.begin(P, 5, "old copy")
    assert acks.clear() == 0
    acks.begin(P, 5, "new copy")
    acks.begin(P, 6, "after")
    assert acks.done(P, 6, "after") == []
    assert acks.forget(P, 5, "old copy") == []  # the new copy still holds offset 5
    assert acks.done(P, 5, "new copy") == ["new copy", "after"]


def test_clear_and_drop_forget_what_waits() -> None:
    acks: InOrderAcks[str] = InOrderAcks()
    for part in (P, Q):
        acks.begin(part, 0, "first")
        acks.begin(part, 1, "second")
        acks.done(part, 1, "second")
    assert acks.drop([Q]) == 1
    assert acks.waiting() == 1
    assert acks.clear() == 1
    assert acks.done(P, 1, "late") == ["late"]  # nothing held any more


def faust_commit_offsets(committed: int | None, acked_in_order: list[int]) -> list[int]:
    """The offsets Faust's consumer commits as these acks come in, one commit after each:
    its own `_new_offset` on its own bookkeeping."""
    tp = TP("telemetry.aidb", 0)
    state = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(lambda: None),
        _committed_offset=defaultdict(lambda: None, {tp: committed}),
    )
    commits = []
    for offset in acked_in_order:
        state._acked[tp].append(offset)
        state._acked_index[tp].add(offset)
        new: Any = Consumer._new_offset(state, tp)  # type: ignore[arg-type]
        if new is not None:
            state._committed_offset[tp] = new
            commits.append(new)
    return commits


@pytest.mark.parametrize("committed", [None, 0, 10])
def test_faust_alone_commits_past_an_unfinished_offset(committed: int | None) -> None:
    # Offset `start` is held for the watermark; the next two are scored and acked.
    start = committed or 0
    commits = faust_commit_offsets(committed, [start + 1, start + 2])
    assert commits and max(commits) > start  # a crash now would never re-read `start`


@pytest.mark.parametrize("committed", [None, 0, 10])
def test_through_the_gate_no_commit_passes_an_unfinished_offset(committed: int | None) -> None:
    rng = random.Random(7)
    start = committed or 0
    for _ in range(200):
        offsets = list(range(start, start + 12))
        acks: InOrderAcks[int] = InOrderAcks()
        for o in offsets:
            acks.begin(P, o, o)
        finish = offsets[:]
        rng.shuffle(finish)
        acked: list[int] = []
        unfinished = set(offsets)
        for o in finish:
            unfinished.discard(o)
            acked += acks.done(P, o, o)
            commits = faust_commit_offsets(committed, acked)
            lowest = min(unfinished, default=start + len(offsets))
            assert all(c <= lowest for c in commits), (finish, acked, commits)
        assert acked == offsets


def test_a_skipped_record_is_read_again_once_and_a_real_gap_accepted() -> None:
    from streams.acks import OffsetGaps

    gaps = OffsetGaps()
    gaps.new_generation(1)
    assert gaps.observe(P, 10, committed=10) is None
    assert gaps.observe(P, 11, committed=10) is None
    assert gaps.observe(P, 14, committed=10) == 12  # 12 and 13 were skipped: read again
    assert gaps.observe(P, 15, committed=10) is None  # buffered before the seek: accepted
    assert gaps.observe(P, 12, committed=10) is None  # the re-read
    gaps.new_generation(2)  # a rebalance: the committed offset is the start again
    assert gaps.observe(P, 20, committed=16) == 16
    assert gaps.observe(Q, 5, committed=None) is None  # no committed offset: its first record
    assert gaps.observe(Q, 6, committed=None) is None
    gaps.new_generation(3)
    assert gaps.observe(P, 20, committed=16) is None  # seen before: a real gap (e.g. markers)
