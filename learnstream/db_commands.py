"""``learnstream db``: psql on the pipeline's PostgreSQL, or one query and its rows.

It connects where the sink writes: ``LEARNSTREAM_POSTGRES__URL`` when set, else the embedded
server under ``<data dir>/postgres`` (started for the command and stopped when it ends, unless
another process still uses it). psql comes from ``PATH``, else the one bundled with pgserver;
without either, a query (``-c``) runs through psycopg and its rows are printed tab-separated.
Only click is imported at module level (``learnstream --help`` stays fast).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from learnstream.cli_support import command_settings


def find_psql() -> str | None:
    """psql on ``PATH``, else the one pgserver bundles; None when there is neither."""
    found = shutil.which("psql")
    if found:
        return found
    try:
        import pgserver
    except ImportError:
        return None
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.is_file() else None


def run_query(url: str, query: str) -> None:
    """Run ``query`` through psycopg (autocommit); print a header and rows tab-separated, or
    the status of a statement that returns no rows."""
    import psycopg

    from learnstream.postgres import connect

    try:
        with connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(query)  # the user's own SQL, as psql -c would run it
            if cur.description is None:
                click.echo(cur.statusmessage or "done")
                return
            click.echo("\t".join(col.name for col in cur.description))
            rows = cur.fetchall()
            for row in rows:
                click.echo("\t".join(_cell(value) for value in row))
            click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"query failed: {first}") from None


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("\t", " ").replace("\n", "\\n")


def _run_psql(argv: list[str]) -> int:
    """Run psql in the foreground: Ctrl-C is its own; SIGTERM is passed on to it."""
    proc = subprocess.Popen(argv)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@click.command("db")
@click.option(
    "-c",
    "--query",
    "query",
    default=None,
    metavar="SQL",
    help="Run SQL (through psql, else psycopg) and print its rows instead of opening psql.",
)
@click.option(
    "--no-psql",
    is_flag=True,
    help="Run the query through psycopg even when psql is installed (tab-separated rows).",
)
@click.option(
    "--print-url", is_flag=True, help="Print the connection URL (password masked) and exit."
)
def db(query: str | None, no_psql: bool, print_url: bool) -> None:
    """Open psql on the pipeline's PostgreSQL, or run one query (-c) and print its rows.

    The same database the sink writes: LEARNSTREAM_POSTGRES__URL, else the embedded server in
    <data dir>/postgres (the demo's: --data-dir <data dir>/demo/latest). Table:
    telemetry_events.
    """
    import logging

    from learnstream.postgres import postgres_url, redact

    settings = command_settings()
    logging.getLogger("learnstream.postgres").setLevel(logging.WARNING)  # quiet when all is well
    url = postgres_url(settings)  # starts the embedded server for this command
    if print_url:
        click.echo(redact(url))
        return
    psql = None if no_psql else find_psql()
    if psql is None:
        if query is None:
            raise click.ClickException(
                "psql is not installed (Debian/Ubuntu: apt-get install postgresql-client); "
                'run a query without it: learnstream db -c "select ..."'
            )
        if not no_psql:
            click.echo("psql not found; running the query through psycopg", err=True)
        run_query(url, query)
        return
    argv = [psql, "-v", "ON_ERROR_STOP=1", url]
    if query is not None:
        argv += ["-c", query]
    sys.exit(_run_psql(argv))
