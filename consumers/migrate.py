"""Versioned SQL migrations for learnstream's PostgreSQL schema.

Migrations are the files ``consumers/migrations/NNNN_name.sql``, applied in version order.
Each pending one runs in its own transaction together with its row in ``schema_migrations``
(version, name, checksum, applied_at), so a migration is either wholly applied and recorded or
not at all. Every transaction first takes a transaction-scoped advisory lock, so several
processes starting at once (two sinks, say) apply each migration exactly once: the others wait,
then see it recorded and skip it. Applying is idempotent: a second run does nothing.

Never edit a released migration; add a later-numbered file. A changed file is reported (its
checksum differs from the recorded one) but not re-applied.

Run by hand: ``python -m consumers.migrate [URL]`` (default: the configured or embedded server).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    import psycopg

log = logging.getLogger("learnstream.migrate")

# pg_advisory_xact_lock key: the first 8 bytes of sha256("learnstream.schema_migrations").
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"learnstream.schema_migrations").digest()[:8], "big", signed=True
)
_FILE = re.compile(r"^(\d{4,})_([A-Za-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed or failed to apply."""


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the SQL text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str = "consumers.migrations") -> list[Migration]:
    """Every ``NNNN_name.sql`` in ``package``, in version order; duplicate versions are an error."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file name not NNNN_name.sql: {entry.name}")
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"two migrations with version {version}: {found[version].name}, {match.group(2)}"
            )
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    """Recorded migrations: version -> (name, checksum); empty when none were ever applied."""
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return {}
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(v): (str(n), str(c)) for v, n, c in rows}


def migrate(
    conn: psycopg.Connection[Any], migrations: Iterable[Migration] | None = None
) -> list[int]:
    """Apply every pending migration, each in its own locked transaction; the versions applied.

    ``conn`` must not be inside a transaction (psycopg's default non-autocommit connection
    between transactions is fine, and so is an autocommit one).
    """
    todo = load_migrations() if migrations is None else sorted(migrations, key=lambda m: m.version)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(_CREATE_TABLE)
    applied: list[int] = []
    for migration in todo:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            row = conn.execute(
                "SELECT checksum FROM schema_migrations WHERE version = %s",
                (migration.version,),
            ).fetchone()
            if row is not None:
                if row[0] != migration.checksum:
                    log.warning(
                        "migration %04d_%s changed after it was applied (checksum differs); "
                        "not re-applied: add a new migration instead",
                        migration.version,
                        migration.name,
                    )
                continue
            try:
                conn.execute(migration.sql.encode())
            except Exception as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        log.info("applied migration %04d_%s", migration.version, migration.name)
        applied.append(migration.version)
    known = {m.version for m in todo}
    newer = sorted(v for v in applied_versions(conn) if v not in known)
    if newer:
        log.warning("the database has migrations this version does not know: %s", newer)
    return applied


def main(argv: list[str] | None = None) -> int:
    """``python -m consumers.migrate [URL]``: apply pending migrations and list them."""
    from learnstream.core.settings import load_settings
    from learnstream.core.signals import configure_logging
    from learnstream.postgres import connect, postgres_url, redact

    args = sys.argv[1:] if argv is None else argv
    settings = load_settings()
    configure_logging(settings)
    url = args[0] if args else postgres_url(settings)
    with connect(url) as conn:
        done = migrate(conn)
        print(f"{redact(url)}: applied {len(done)} migration(s)")
        for version, (name, _) in sorted(applied_versions(conn).items()):
            print(f"  {version:04d}_{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
