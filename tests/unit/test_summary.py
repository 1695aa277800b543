"""The periodic one-line summary of a long-running process."""

from __future__ import annotations

import logging

import pytest

from learnstream.core.summary import Summary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_per_interval_with_totals_changes_rate_and_gauges(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    summary = Summary(logging.getLogger("t.summary"), "sink", 60, clock=clock)
    caplog.set_level(logging.INFO, "t.summary")
    summary.add(read=300, written=298)
    summary.add(dead_letters=2)
    summary.gauge(partitions=6, lag=0)
    clock.now = 30
    assert not summary.maybe_log()  # not yet
    clock.now = 60
    assert summary.maybe_log()
    summary.add(read=60, written=60)
    clock.now = 120
    assert summary.maybe_log()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "sink: read 300 (+300, 5.0/s), written 298 (+298), dead letters 2 (+2); "
        "partitions 6, lag 0",
        "sink: read 360 (+60, 1.0/s), written 358 (+60), dead letters 2 (+0); partitions 6, lag 0",
    ]


def test_idle_is_said_once_and_zero_turns_it_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, "t.idle")
    summary = Summary(logging.getLogger("t.idle"), "tailer", 10, clock=clock)
    summary.add(lines=5)
    logged = []
    for t in range(10, 60, 10):
        clock.now = t
        logged.append(summary.maybe_log())
    assert logged == [True, True, False, False, False]  # the first idle line, then quiet
    summary.add(lines=1)
    clock.now = 70
    assert summary.maybe_log()  # busy again
    off = Summary(logging.getLogger("t.idle"), "gateway", 0, clock=clock)
    off.add(requests=1)
    clock.now = 1e6
    assert not off.maybe_log()
    assert summary.total("lines") == 6
