"""A long-running process's periodic one-line summary in its log.

Each process (the worker, the sink, the tailer, the gateway) counts what it did and calls
`Summary.maybe_log` from its loop; once every ``LEARNSTREAM_SUMMARY_INTERVAL_S`` (60 s by
default, 0: never) it logs one INFO line of the totals, what changed since the last line, the
rate of the first count, and its gauges::

    sink: read 1200 (+300, 5.0/s), written 1198 (+299), dead letters 2 (+1); partitions 6, lag 0

Counting is thread-safe and cheap (a lock and a dict update); nothing is logged while a
process is idle except once, the first line after it went idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Summary:
    """Counts and gauges of one process, logged as a line every ``interval_s`` seconds."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._at_last: dict[str, int] = {}
        self._gauges: dict[str, int | float | str] = {}
        self._last = clock()
        self._idle_logged = False

    def add(self, **counts: int) -> None:
        """Add to counts (created at 0 on first use; their order is that of first use)."""
        with self._lock:
            for name, n in counts.items():
                self._totals[name] = self._totals.get(name, 0) + n

    def set_totals(self, **totals: int) -> None:
        """Set counts to totals kept elsewhere (the change is still shown per line)."""
        with self._lock:
            self._totals.update(totals)

    def gauge(self, **values: int | float | str) -> None:
        """Set values shown as they are (partitions, lag, held events...)."""
        with self._lock:
            self._gauges.update(values)

    def total(self, name: str) -> int:
        """A count's total so far."""
        with self._lock:
            return self._totals.get(name, 0)

    def line(self, elapsed: float) -> str:
        """The summary line (without updating the window)."""
        with self._lock:
            return self._line(elapsed)

    def _line(self, elapsed: float) -> str:
        parts = []
        for i, (name, total) in enumerate(self._totals.items()):
            delta = total - self._at_last.get(name, 0)
            rate = f", {delta / elapsed:.1f}/s" if i == 0 and elapsed > 0 else ""
            parts.append(f"{name.replace('_', ' ')} {total} (+{delta}{rate})")
        text = f"{self.what}: " + (", ".join(parts) or "nothing yet")
        if self._gauges:
            shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self._gauges.items())
            text += f"; {shown}"
        return text

    def maybe_log(self) -> bool:
        """Log the line if ``interval_s`` passed since the last one; True when it logged."""
        if self.interval_s <= 0:
            return False
        now = self.clock()
        with self._lock:
            elapsed = now - self._last
            if elapsed < self.interval_s:
                return False
            idle = self._totals == self._at_last
            if idle and self._idle_logged:
                self._last = now
                return False
            self._idle_logged = idle
            text = self._line(elapsed)
            self._at_last = dict(self._totals)
            self._last = now
        self.log.info("%s", text)
        return True
