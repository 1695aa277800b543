"""Helpers for command groups that live outside `learnstream.cli` (and also run standalone)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from learnstream.core.settings import Settings


BROKER_TIMEOUT = click.option(
    "--timeout",
    default=10.0,
    type=click.FloatRange(min=0.1),
    show_envvar=True,
    help="Seconds to wait for the broker.",
)
"""The ``--timeout`` of the commands that only talk to the broker (topics, dlq)."""

SOURCES = click.Choice(["ralph", "aidb", "hybrid", "vscode"])
"""The ``--source`` choices: `schemas.base.Source` spelled out, so ``--help`` imports no
pydantic model (tests/unit/test_cli.py checks that they are the same)."""

SOURCE_OPTION = click.option(
    "--source",
    "source",
    required=True,
    type=SOURCES,
    show_envvar=True,
    help="Which tool's schema and topic.",
)
"""The ``--source`` of the commands that publish one tool's JSONL (produce send, backfill)."""

DELIVERY_TIMEOUT = click.option(
    "--timeout",
    default=60.0,
    show_envvar=True,
    help="Seconds to wait for delivery before giving up (undelivered stay spooled).",
)
"""The ``--timeout`` of the commands that publish JSONL through the spool."""


def command_settings() -> Settings:
    """The settings of the running command: the root `learnstream.cli.Context`'s, if any.

    Run standalone (a group invoked on its own), they are loaded from the environment;
    invalid ones end the command with a message naming them.
    """
    settings = getattr(click.get_current_context().find_root().obj, "settings", None)
    if settings is not None:
        return settings
    from learnstream.core.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def quiet_producer_log(settings: Settings) -> Iterator[None]:
    """Keep the producer SDK's warnings (``spooling to ...``, meant for long-running processes)
    out of a one-shot command, which says itself what it left in the spool; errors still show,
    and everything does with LEARNSTREAM_LOG_LEVEL=DEBUG. The level is restored afterwards
    (a command run in-process must not silence the SDK of its caller)."""
    logger = logging.getLogger("learnstream.producer")
    previous = logger.level
    if settings.log_level != "DEBUG":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)
