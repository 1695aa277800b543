"""Stopping a long-running consumer cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any


def install_stop_handlers(stop: threading.Event, log: logging.Logger) -> dict[int, Any]:
    """SIGINT/SIGTERM set ``stop``; a second signal gets the previous handler's behaviour.

    Returns the previous handlers, for the caller to restore when it is done.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that ``finally`` blocks (child processes,
    embedded services) run as they do on Ctrl-C."""


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` (exit code 143) in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
