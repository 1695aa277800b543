"""``learnstream dlq``: count, list and show dead letters, and re-publish them after a fix.

Only click is imported at module level (``--help`` stays fast). Every option can also be set
from the environment (``LEARNSTREAM_DLQ_<COMMAND>_<OPTION>``). The rpk equivalent of
``list`` is ``rpk topic consume telemetry.dlq`` (or ``kcat -C -t telemetry.dlq -J``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from learnstream.cli_support import BROKER_TIMEOUT, command_settings

if TYPE_CHECKING:
    from learnstream.dlq import Letter

FILTERS = [
    click.option("--source", default=None, show_envvar=True, help="Only this source's letters."),
    click.option(
        "--kind", default=None, show_envvar=True, help="Only this error kind (see `dlq count`)."
    ),
    click.option(
        "--stage", default=None, show_envvar=True, help="Only this stage (sdk, score, sink, ...)."
    ),
]


def _filters(f: Any) -> Any:
    for option in reversed(FILTERS):
        f = option(f)
    return f


def _letters(timeout: float, **filters: Any) -> list[Letter]:
    from learnstream.cli import broker_errors, librdkafka_logger
    from learnstream.core.kafka import BrokerNotConfiguredError, client_config
    from learnstream.dlq import read_letters, select

    settings = command_settings()
    try:
        conf = client_config(settings, logger=librdkafka_logger(settings.log_level == "DEBUG"))
    except BrokerNotConfiguredError as exc:
        raise click.ClickException(str(exc)) from None
    with broker_errors(conf, timeout):
        return select(read_letters(conf, timeout), **filters)


@click.group()
def dlq() -> None:
    """Dead letters (telemetry.dlq): what could not be accepted, and why."""


@dlq.command("count")
@_filters
@BROKER_TIMEOUT
def dlq_count(source: str | None, kind: str | None, stage: str | None, timeout: float) -> None:
    """Dead letters per source, stage and error kind."""
    from learnstream.dlq import counts

    letters = _letters(timeout, source=source, kind=kind, stage=stage)
    click.echo(f"{'COUNT':>7}  {'SOURCE':8} {'STAGE':9} KIND")
    for (src, stg, knd), n in sorted(counts(letters).items(), key=lambda kv: -kv[1]):
        click.echo(f"{n:>7}  {src:8} {stg:9} {knd}")
    click.echo(f"{len(letters):>7}  total")


@dlq.command("list")
@_filters
@click.option("--limit", default=50, type=click.IntRange(min=1), show_envvar=True)
@BROKER_TIMEOUT
def dlq_list(
    *, source: str | None, kind: str | None, stage: str | None, limit: int, timeout: float
) -> None:
    """The newest dead letters, one line each: position, time, source, stage, kind, reason."""
    letters = _letters(timeout, source=source, kind=kind, stage=stage)
    for x in letters[-limit:]:
        d = x.letter
        reason = d.error if len(d.error) <= 160 else d.error[:157] + "..."
        click.echo(
            f"{x.position:>9}  {d.failed_at:%Y-%m-%dT%H:%M:%S}  {d.source or '-':7} "
            f"{d.stage:8} {d.error_kind:14} {reason}"
        )
    if len(letters) > limit:
        click.echo(f"({len(letters) - limit} older not shown; --limit)", err=True)


@dlq.command("show")
@click.argument("positions", nargs=-1, required=True)
@BROKER_TIMEOUT
def dlq_show(positions: tuple[str, ...], timeout: float) -> None:
    """The whole dead letter at PARTITION:OFFSET, with its original decoded (UTF-8)."""
    letters = _letters(timeout, positions=positions)
    found = {x.position for x in letters}
    for x in letters:
        doc = json.loads(x.letter.model_dump_json())
        doc["original"] = x.letter.original().decode("utf-8", "replace")
        click.echo(json.dumps({"position": x.position, **doc}, indent=2))
    missing = [p for p in positions if p not in found]
    if missing:
        raise click.ClickException(f"no dead letter at {', '.join(missing)}")


@dlq.command("republish")
@_filters
@click.option(
    "--position", "positions", multiple=True, show_envvar=True, help="PARTITION:OFFSET (repeat)."
)
@click.option("--dry-run", is_flag=True, help="Say what would be sent, send nothing.")
@BROKER_TIMEOUT
def dlq_republish(
    *,
    source: str | None,
    kind: str | None,
    stage: str | None,
    positions: tuple[str, ...],
    dry_run: bool,
    timeout: float,
) -> None:
    """Send the selected letters' original bytes back to their topics (after a fix).

    They are validated again there: what is valid now is accepted (its id dedupes it
    downstream), what is not becomes a new dead letter. A filter or --position is needed.
    """
    if not (source or kind or stage or positions):
        raise click.UsageError("select letters: --source, --kind, --stage or --position")
    from learnstream.core.kafka import reliable_producer_config
    from learnstream.dlq import republish, target_topic

    letters = _letters(timeout, source=source, kind=kind, stage=stage, positions=positions)
    if dry_run:
        for x in letters:
            click.echo(f"{x.position:>9}  -> {target_topic(x.letter) or '(nowhere)'}")
        click.echo(f"{len(letters)} letters would be re-published")
        return
    settings = command_settings()
    skipped: list[str] = []

    def skip(x: Letter, why: str) -> None:
        skipped.append(x.position)
        click.echo(f"{x.position}: skipped: {why}", err=True)

    try:
        sent = republish(reliable_producer_config(settings), letters, timeout=timeout, on_skip=skip)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-published {sent} of {len(letters)} dead letters")
