"""The arrival-time watermark: release rules, ordering, lateness, misses, the bounded wait, and
completeness under any consumer interleaving (simulated live runs and replays)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from scorers.watermark import EventTimeBuffer

H, MARGIN, MAX_HOLD = 1.0, 0.25, 30.0


def buffer(*partitions: str) -> EventTimeBuffer[str]:
    b: EventTimeBuffer[str] = EventTimeBuffer(H, MARGIN, MAX_HOLD)
    b.assign(partitions)
    return b


def hold(b: EventTimeBuffer[str], p: str, offset: int, *, ts: float, kt: float, now: float) -> None:
    b.read(p, offset, kt)
    b.hold(f"{p}{offset}", p, ts=ts, key=f"{p}{offset}", kt=kt, now=now)


def released(b: EventTimeBuffer[str], now: float) -> list[str]:
    return [h.item for h in b.release(now)]


def test_an_event_waits_until_every_partition_delivered_a_later_arrival() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=100.0, kt=10.0, now=10.0)
    b.read("A", 1, 11.5)  # A passes 11.25 (= kt + H + margin) by a later record
    assert released(b, 12.0) == []  # B has said nothing
    b.read("B", 0, 11.2)  # not late enough: B could still deliver an arrival <= 11
    assert released(b, 12.0) == []
    b.read("B", 1, 11.25)
    assert released(b, 12.0) == ["A0"]
    assert len(b) == 0


def test_a_caught_up_partition_passes_the_time_of_its_end_check() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=100.0, kt=10.0, now=10.0)
    b.read("A", 1, 20.0)
    assert b.needs_start() == ["B"]
    assert b.waiting_on(11.0) == []  # no end check made before 11.25 could help
    assert b.waiting_on(11.3) == ["B"]
    b.observe_ends({"B": 7}, at=11.3)  # B's end is 7, but where B starts is unknown
    assert released(b, 11.3) == []
    b.set_start("B", 7)  # its committed offset: everything before was read earlier
    b.observe_ends({"B": 8}, at=11.3)  # a record arrived meanwhile: not caught up
    assert released(b, 11.3) == []
    b.observe_ends({"B": 7}, at=11.2)  # caught up, but asked too early to pass 11
    assert released(b, 11.3) == []
    b.observe_ends({"B": 7}, at=11.25)
    assert released(b, 11.3) == ["A0"]


def test_an_empty_partition_is_caught_up_without_a_start() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=1.0, kt=10.0, now=10.0)
    b.read("A", 1, 20.0)
    b.observe_ends({"B": 0}, at=12.0)
    assert released(b, 12.0) == ["A0"]


def test_releases_come_in_event_time_order_whatever_the_arrival_order() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=5.0, kt=10.0, now=10.0)
    hold(b, "B", 0, ts=3.0, kt=10.1, now=10.1)
    hold(b, "A", 1, ts=4.0, kt=10.2, now=10.2)
    hold(b, "B", 1, ts=4.0, kt=10.3, now=10.3)  # a tie in event time: the id decides
    b.read("A", 2, 30.0)
    b.read("B", 2, 30.0)
    assert released(b, 12.0) == ["B0", "A1", "B1", "A0"]


def test_an_event_waits_for_a_held_earlier_event_it_can_see() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=5.0, kt=10.0, now=10.0)  # sees arrivals up to 11
    hold(b, "B", 0, ts=4.0, kt=10.8, now=10.8)  # earlier, visible to A0, sees up to 11.8
    b.read("A", 1, 11.5)
    b.read("B", 1, 11.5)  # both partitions passed 11.25 but not 12.05
    assert released(b, 12.0) == []  # A0 could go, but B0 must be scored first
    b.read("A", 2, 12.05)
    b.read("B", 2, 12.05)
    assert released(b, 12.1) == ["B0", "A0"]


def test_a_held_earlier_event_that_arrived_too_late_to_be_seen_does_not_block() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=5.0, kt=10.0, now=10.0)  # sees arrivals up to 11
    hold(b, "B", 0, ts=4.0, kt=11.1, now=11.1)  # earlier, but arrived after 11: invisible
    b.read("A", 1, 11.5)
    b.read("B", 1, 11.5)
    assert released(b, 12.0) == ["A0"]
    assert len(b) == 1


def test_lateness_is_decided_by_arrival_times_alone() -> None:
    b = buffer("A")
    hold(b, "A", 0, ts=10.0, kt=1.0, now=1.0)
    hold(b, "A", 1, ts=5.0, kt=1.5, now=1.5)  # within H of the newer event: on time
    hold(b, "A", 2, ts=5.0, kt=3.0, now=3.0)  # more than H after an event later than it
    b.read("A", 3, 10.0)
    out = {h.item: h for h in b.release(10.0)}
    assert (out["A0"].late, out["A1"].late, out["A2"].late) == (False, False, True)
    assert not any(h.forced or h.missed for h in out.values())


def test_an_event_that_arrives_after_one_that_needed_it_was_released_is_a_miss() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=10.0, kt=1.0, now=1.0)
    b.read("A", 1, 5.0)
    b.observe_ends({"B": 0}, at=2.5)
    assert released(b, 2.5) == ["A0"]
    b.read("B", 0, 1.5)  # CreateTime 1.5, appended long after: should have been seen
    missed = b.hold("B0", "B", ts=5.0, key="B0", kt=1.5, now=3.0)
    assert missed.missed
    b.read("B", 1, 4.0)
    fine = b.hold("B1", "B", ts=5.0, key="B1", kt=4.0, now=4.0)  # arrived after A0's horizon
    assert not fine.missed
    again = b.hold("A0", "A", ts=10.0, key="A0", kt=1.0, now=4.0)  # re-read after a rebalance
    assert not again.missed


def test_the_bounded_wait_forces_out_an_event_and_everything_not_later() -> None:
    b = buffer("A", "B")  # B never says anything
    hold(b, "A", 0, ts=5.0, kt=10.0, now=10.0)
    hold(b, "A", 1, ts=4.0, kt=20.0, now=20.0)
    hold(b, "A", 2, ts=6.0, kt=21.0, now=21.0)
    b.read("A", 3, 100.0)
    assert b.oldest_wait(39.0) == pytest.approx(29.0)
    assert released(b, 39.0) == []
    out = b.release(40.0)
    assert [h.item for h in out] == ["A1", "A0"]
    assert all(h.forced for h in out)
    assert [h.item for h in b.release(51.0)] == ["A2"]


def test_assign_and_clear() -> None:
    b = buffer("A", "B")
    hold(b, "A", 0, ts=5.0, kt=10.0, now=10.0)
    hold(b, "B", 0, ts=5.0, kt=10.0, now=10.0)
    gone = b.assign(["A", "C"])
    assert [h.item for h in gone] == ["B0"] and b.partitions == {"A", "C"}
    assert [h.item for h in b.clear()] == ["A0"]
    assert len(b) == 0 and b.needs_start() == ["A", "C"]  # read again from the committed offset


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        EventTimeBuffer(-1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        EventTimeBuffer(1.0, 0.0, 0.0)


# --- completeness under any interleaving -----------------------------------------------------


@dataclass(frozen=True)
class Rec:
    partition: str
    offset: int
    ts: float
    kt: float  # arrival = append time (a monotone clock per partition)
    key: str


def make_log(seed: int, partitions: int = 4, n: int = 120) -> list[Rec]:
    """Records with event times that run ahead of, lag behind and scatter around arrival."""
    rng = random.Random(seed)
    log: list[Rec] = []
    for p in range(partitions):
        name = f"p{p}"
        kt = rng.uniform(0, 2)
        delay = rng.choice([0.0, 0.3, 2.5])  # a partition whose producer lags
        for off in range(n // partitions):
            kt += rng.expovariate(2.0)
            ts = kt - delay - rng.uniform(0, 3)
            log.append(Rec(name, off, round(ts, 3), round(kt, 3), f"{name}-{off}"))
    return log


def oracle(log: list[Rec], e: Rec) -> set[str]:
    return {r.key for r in log if r.ts < e.ts and r.kt <= e.kt + H and r.key != e.key}


def run(log: list[Rec], seed: int, *, live: bool) -> tuple[dict[str, set[str]], dict[str, bool]]:
    """Feed the buffer as a consumer with random per-partition lag would; score releases.

    ``live``: records become readable at their arrival time and the clock runs with them; else
    (a replay) everything is in the log from the start and the clock is far ahead.
    """
    rng = random.Random(seed)
    parts = sorted({r.partition for r in log})
    by_part = {
        p: sorted((r for r in log if r.partition == p), key=lambda r: r.offset) for p in parts
    }
    pos = dict.fromkeys(parts, 0)
    b: EventTimeBuffer[Rec] = EventTimeBuffer(H, MARGIN, 1e9)
    b.assign(parts)
    history: list[Rec] = []
    seen: dict[str, set[str]] = {}
    late: dict[str, bool] = {}
    now = 0.0 if live else 1e6
    end_of_log = max(r.kt for r in log) + 10

    def score(batch: list[Rec]) -> None:
        for e in batch:  # in release order: earlier events of the batch are history already
            assert e.key not in seen
            seen[e.key] = {r.key for r in history if r.ts < e.ts and r.kt <= e.kt + H}
            history.append(e)

    while len(seen) < len(log):
        if live:
            now += rng.uniform(0.0, 0.4)
        readable = {p: [r for r in by_part[p] if not live or r.kt <= now] for p in parts}
        # Read a random amount from random partitions (some lag far behind).
        for p in rng.sample(parts, rng.randint(0, len(parts))):
            for _ in range(rng.randint(0, 4)):
                if pos[p] < len(readable[p]):
                    r = readable[p][pos[p]]
                    pos[p] += 1
                    b.read(p, r.offset, r.kt)
                    b.hold(r, p, ts=r.ts, key=r.key, kt=r.kt, now=now)
        if rng.random() < 0.5 or (live and now > end_of_log):
            at = now
            want = [str(p) for p in b.waiting_on(now)]
            b.observe_ends({p: len(readable[p]) for p in want}, at)
            for p in want:
                b.set_start(p, 0)
        out = b.release(now)
        for h in out:
            late[h.item.key] = h.late
            assert not h.forced and not h.missed
        score([h.item for h in out])
        if not live and all(pos[p] == len(by_part[p]) for p in parts) and not out and len(b):
            b.observe_ends({p: len(by_part[p]) for p in parts}, now)
    return seen, late


@pytest.mark.parametrize("seed", range(6))
def test_every_event_sees_exactly_what_is_visible_live_and_on_replay(seed: int) -> None:
    log = make_log(seed)
    expected = {e.key: oracle(log, e) for e in log}
    assert sum(len(v) for v in expected.values()) > 500  # not vacuous
    live_seen, live_late = run(log, seed, live=True)
    replay_seen, replay_late = run(log, seed + 100, live=False)
    assert live_seen == expected
    assert replay_seen == expected
    assert live_late == replay_late
    assert any(live_late.values()) and not all(live_late.values())
