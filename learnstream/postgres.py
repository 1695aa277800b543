"""PostgreSQL for learnstream: the configured server, or an embedded one, and connections.

``LEARNSTREAM_POSTGRES__URL`` names the server in production. Without it, `postgres_url`
starts (or attaches to) a private PostgreSQL run by `pgserver` in ``settings.postgres_dir``
(``<data dir>/postgres``; needs the ``embedded`` extra). The embedded server is shared by every
process of the machine that uses the same folder: pgserver records each attached process and
stops the server when the last of them exits (its default ``cleanup_mode="stop"``), so nothing
keeps running after the sink or the demo ends, and the data stays in the folder for next time.
It listens only on a Unix socket in that folder (or a short runtime folder when the path is too
long for a socket), never on TCP.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from learnstream.settings import Settings

log = logging.getLogger("learnstream.postgres")

APPLICATION_NAME = "learnstream"
CONNECT_TIMEOUT_S = 5


def postgres_url(settings: Settings) -> str:
    """The PostgreSQL URL to use: the configured one, else the embedded server's (started now).

    The embedded server runs from ``settings.postgres_dir`` and stops when the last process
    using it exits (see the module docs).
    """
    if settings.postgres.url is not None:
        return settings.postgres.url.get_secret_value()
    return embedded_url(settings)


def embedded_url(settings: Settings) -> str:
    """Start or attach to the embedded pgserver under ``settings.postgres_dir``; its URI."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no PostgreSQL: set LEARNSTREAM_POSTGRES__URL, or install the embedded server with "
            "`pip install learnstream[embedded]`"
        ) from exc
    folder = settings.postgres_dir.expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    # pgserver keeps one handle per folder for the life of the process (or until its
    # cleanup()); cleanup_mode "stop": the server stops when its last user process exits.
    server = pgserver.get_server(folder, cleanup_mode="stop")
    uri = str(server.get_uri())
    log.info("embedded PostgreSQL in %s", folder)
    return uri


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and messages."""
    return re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)


def connect(
    url: str,
    *,
    autocommit: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    application_name: str = APPLICATION_NAME,
    statement_timeout_ms: int | None = None,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection with settings suited to long-running consumers.

    A bounded connect timeout (a server that is down fails fast, so callers can back off and
    retry), TCP keepalives (a silently dead server is noticed in about 30 s instead of hours),
    an application name visible in ``pg_stat_activity``, and an optional statement timeout.
    Parameters given in ``url`` win over these defaults; keyword arguments win over both.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    defaults: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout)),
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if statement_timeout_ms is not None:
        defaults["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    params = {**defaults, **conninfo_to_dict(url), **kwargs}
    return psycopg.connect(autocommit=autocommit, **params)
