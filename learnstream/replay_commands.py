"""``learnstream replay`` (move a consumer group's offsets) and ``learnstream backfill``.

Only click is imported at module level, so ``learnstream --help`` stays fast; settings come
from the root command's context object (anything with a ``settings`` attribute, like
``learnstream.cli.Context``) or, when run standalone, from ``load_settings()``. Every option
can also be set from the environment (``LEARNSTREAM_REPLAY_*``, ``LEARNSTREAM_BACKFILL_*``).

Equivalent rpk commands on Redpanda: ``rpk group describe G`` (members, offsets, lag) and
``rpk group seek G --to start|end|<unix-ms> --topics T``. See ``learnstream.replay_plan`` for how
offsets are computed and ``learnstream.replay`` for the dev-broker fallbacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnstream.cli_support import DELIVERY_TIMEOUT, SOURCE_OPTION, command_settings

if TYPE_CHECKING:
    from learnstream.core.settings import Settings


def _kafka_config(settings: Settings) -> dict[str, Any]:
    from learnstream.cli import librdkafka_logger
    from learnstream.core.kafka import BrokerNotConfiguredError, client_config

    try:
        conf = client_config(settings)
    except BrokerNotConfiguredError as exc:
        raise click.ClickException(str(exc)) from None
    # librdkafka's FAIL line per retry goes through logging (shown with LOG_LEVEL=DEBUG).
    conf.setdefault("logger", librdkafka_logger(settings.log_level == "DEBUG"))
    return conf


# --- replay ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--group",
    required=True,
    show_envvar=True,
    help="Consumer group: the worker's (LEARNSTREAM_WORKER__APP_ID, default learnstream), "
    "learnstream-sink, learnstream-trainer, or any other.",
)
@click.option(
    "--topic",
    "topics",
    required=True,
    multiple=True,
    show_envvar=True,
    help="Topic whose offsets move (repeat for several).",
)
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    type=click.IntRange(min=0),
    show_envvar=True,
    help="Only these partitions of every --topic (repeat; default: all).",
)
@click.option("--to-start", is_flag=True, show_envvar=True, help="To the low watermark.")
@click.option("--to-end", is_flag=True, show_envvar=True, help="To the high watermark (skip all).")
@click.option(
    "--to-offset",
    type=click.IntRange(min=0),
    default=None,
    show_envvar=True,
    help="To this offset (clamped to the watermarks).",
)
@click.option(
    "--to-time",
    default=None,
    metavar="ISO8601|UNIX_MS",
    show_envvar=True,
    help="To the first record at or after this time (no zone = UTC).",
)
@click.option(
    "--shift-by",
    type=int,
    default=None,
    metavar="N",
    show_envvar=True,
    help="Move the committed offset by N (negative: back, e.g. --shift-by -100).",
)
@click.option("--dry-run", is_flag=True, show_envvar=True, help="Show the plan, change nothing.")
@click.option(
    "--force",
    is_flag=True,
    show_envvar=True,
    help="Skip the active-member check (needed where the broker cannot describe groups).",
)
@click.option(
    "--timeout",
    default=30.0,
    type=click.FloatRange(min=1),
    show_envvar=True,
    help="Seconds to wait for each broker request.",
)
def replay(
    *,
    group: str,
    topics: tuple[str, ...],
    partitions: tuple[int, ...],
    to_start: bool,
    to_end: bool,
    to_offset: int | None,
    to_time: str | None,
    shift_by: int | None,
    dry_run: bool,
    force: bool,
    timeout: float,
) -> None:
    """Move a consumer group's committed offsets to replay (or skip) a topic.

    Give exactly one of --to-start, --to-end, --to-offset, --to-time, --shift-by. Prints per
    partition the committed offset, the new one and the lag it creates (high watermark - new
    offset), with totals; --dry-run stops there. Refuses while the group has active members
    (naming them) unless --force; stop the worker, sink or trainer first. Where the broker
    cannot describe groups (the dev broker) it says so and requires --force. Exits 1 on a
    refusal or error. Sinks upsert by event id, so replays never duplicate.

    \b
    learnstream replay --group learnstream-sink --topic interactions.scored --to-start
    learnstream replay --group learnstream --topic telemetry.ralph \\
                       --to-time 2026-11-02T09:00:00Z --dry-run
    \b
    On Redpanda the same with rpk:
      rpk group describe G
      rpk group seek G --to start|end|<unix-ms> --topics T
    """
    from learnstream.replay import (
        ReplayError,
        choose_target,
        describe_group,
        format_table,
        lookup_times,
        plan_errors,
        plan_resets,
        read_states,
        refusal,
    )

    try:
        target = choose_target(
            to_start=to_start,
            to_end=to_end,
            to_offset=to_offset,
            to_time=to_time,
            shift_by=shift_by,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from learnstream.cli import broker_errors, reach_broker
    from learnstream.core.brokerprofile import profile_for

    settings = command_settings()
    conf = _kafka_config(settings)
    reach_broker(conf, timeout)  # a dead address: one line within --timeout
    profile = profile_for(settings)
    try:
        with broker_errors(conf, timeout):
            states = read_states(conf, group, topics, partitions, timeout)
            times = (
                lookup_times(
                    conf, states, target.value, timeout, scan_for_times=not profile.timestamp_index
                )
                if target.kind == "time"
                else {}
            )
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    plans = plan_resets(states, target, times)
    click.echo(format_table(group, target, plans))
    errors = plan_errors(plans)
    if errors:
        raise click.ClickException("cannot compute every new offset: " + "; ".join(errors))
    info = describe_group(conf, group, timeout)
    if info.error is not None:
        click.echo(f"note: the broker cannot describe consumer groups ({info.error})", err=True)
    elif info.members:
        click.echo(f"group state {info.state}; {len(info.members)} active member(s)", err=True)
    reason = refusal(group, info, force)
    if dry_run:
        if reason:
            click.echo(f"a real run would refuse: {reason}", err=True)
        click.echo("dry run: nothing changed")
        return
    if reason:
        raise click.ClickException(reason)
    _apply_and_check(
        conf, group, plans, info, timeout=timeout, commit_by_joining=profile.commit_by_joining
    )


def _apply_and_check(
    conf: dict[str, Any],
    group: str,
    plans: list[Any],
    info: Any,
    *,
    timeout: float,
    commit_by_joining: bool,
) -> None:
    """Commit the plan's new offsets, read them back, and say what changed."""
    from learnstream.replay import ReplayError, apply_plan, committed_offsets, offset_mismatches

    try:
        outcome = apply_plan(conf, group, plans, info, timeout, commit_by_joining=commit_by_joining)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    if outcome.note:
        click.echo(f"note: {outcome.note}", err=True)
    if outcome.failed:
        lines = "; ".join(f"{t}[{p}]: {err}" for (t, p), err in sorted(outcome.failed.items()))
        raise click.ClickException(f"the broker refused to change offsets of {group}: {lines}")
    wanted = {p.state.key: p.new for p in plans}
    now = committed_offsets(conf, group, wanted, timeout)
    wrong = offset_mismatches(wanted, now)
    if wrong:
        raise click.ClickException(
            f"committed offsets of {group} are not what was asked: " + ", ".join(wrong)
        )
    moved, left = sum(1 for p in plans if p.new is not None), sum(1 for p in plans if p.left)
    click.echo(
        f"group {group}: committed new offsets for {moved} partitions"
        + (f" ({left} empty ones left as they are)" if left else "")
    )


# --- backfill -------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return path.open("rb")


@click.command()
@SOURCE_OPTION
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@DELIVERY_TIMEOUT
@click.option(
    "--spool-name",
    default=None,
    show_envvar=True,
    help="Spool folder name (default: backfill-SOURCE).",
)
def backfill(source: str, files: tuple[Path, ...], timeout: float, spool_name: str | None) -> None:
    """Re-publish archived JSONL telemetry FILE... with the event ids the tailers gave it.

    Ids derive from each file's first line and each line's byte offset (as `produce tail` and
    `produce send` derive them), so a backfill of a file already published, or published
    twice, never duplicates downstream. Files ending in .gz are read decompressed. Invalid
    lines go to telemetry.dlq. Exits 0 when every line was delivered or dead-lettered, 1 when
    some could not be delivered (they stay in the spool and are resent by the next run).
    """
    from learnstream.cli_support import quiet_producer_log
    from schemas import Source
    from streams.producers.sdk import TelemetryProducer
    from streams.producers.sender import problem_lines, read_lines, send_lines

    settings = command_settings()
    _kafka_config(settings)  # fail early and clearly when no broker is known
    sent = invalid = 0
    # the last line says what stayed in the spool, not the SDK's warnings
    with (
        quiet_producer_log(settings),
        TelemetryProducer(
            source, settings, name=spool_name or f"backfill-{source}", stage="backfill"
        ) as producer,
    ):
        for path in files:
            with _open(path) as stream:
                report = send_lines(
                    producer,
                    Source(source),
                    read_lines(stream),
                    origin=str(path),
                    deterministic_ids=True,
                    max_bytes=settings.max_event_bytes,
                    max_depth=settings.max_event_depth,
                    stage="backfill",
                )
            sent += report.sent
            invalid += report.invalid
            types = ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items()))
            click.echo(
                f"{path}: sent {report.sent}, invalid {report.invalid} (to telemetry.dlq)"
                + (f"; {types}" if types else "")
            )
            for line in problem_lines(report, source, str(path)):
                click.echo(line, err=True)
        pending = producer.drain(timeout)
        producer.close(1.0)  # whatever is still undelivered is spooled now, not in 30 s
    click.echo(f"{source}: {len(files)} files, sent {sent}, invalid {invalid}")
    if pending:
        click.echo(
            f"{pending} events not delivered yet; kept in the spool under "
            f"{settings.spool_dir} and resent on the next run",
            err=True,
        )
        sys.exit(1)
