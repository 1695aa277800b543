"""A long-running process's lifecycle: its logging, and stopping cleanly on SIGINT/SIGTERM.

`process_lifecycle` is what every long-running command (sink, trainer, tailer, gateway, dev
broker) enters: logging configured once, and a stop event that SIGINT/SIGTERM set while the
block runs, the previous handlers restored at its end. The Faust worker has its own (Faust's
worker installs the handlers; `streams.app.BoundedShutdownWorker` bounds the shutdown); the
demo raises `Terminated` on SIGTERM so its ``finally`` blocks stop its child processes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from learnstream.core.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Log to stderr at ``LEARNSTREAM_LOG_LEVEL``, unless logging is configured already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)


@contextlib.contextmanager
def process_lifecycle(
    settings: Settings, log: logging.Logger, stop: threading.Event | None = None
) -> Iterator[threading.Event]:
    """Yield the process's stop event (``stop``, or a new one).

    On the main thread logging is configured (unless it is already) and SIGINT/SIGTERM set the
    stop event until the block ends, when the previous handlers are restored; elsewhere (a
    test's thread) only ``stop`` stops it.
    """
    stop = stop or threading.Event()
    main = threading.current_thread() is threading.main_thread()
    if main:
        configure_logging(settings)
    previous = install_stop_handlers(stop, log) if main else {}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            if signal.getsignal(sig) is not old:
                signal.signal(sig, old)


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


def stopped_by_signal(exc: BaseException) -> bool:
    """Whether ``exc`` is `Terminated` or KeyboardInterrupt, or was raised while one was being
    handled (a ``finally`` block's cleanup that failed as the signal stopped the process)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Terminated | KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__context__
    return False
