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

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnstream.core.errors import ServiceUnavailableError

if TYPE_CHECKING:
    import psycopg

    from learnstream.core.settings import Settings

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


# pgserver runs PostgreSQL as this system user when the process is root (postgres refuses root).
PGSERVER_SYSTEM_USER = "pgserver"
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _prepare_root_user(env: dict[str, str]) -> None:
    """As root, make sure pgserver's system user exists, or say exactly why it cannot.

    pgserver creates the user with ``useradd`` found on ``PATH``; a root shell's PATH may lack
    the sbin folders (cron, minimal containers, a test's trimmed environment), so they are
    added for that look-up.
    """
    import pwd
    import shutil
    import subprocess

    try:
        pwd.getpwnam(PGSERVER_SYSTEM_USER)
        return
    except KeyError:
        pass
    path = os.pathsep.join([env.get("PATH", ""), *_SBIN])
    useradd = shutil.which("useradd", path=path)
    if useradd is None:
        raise ServiceUnavailableError(
            f"embedded PostgreSQL: running as root, it needs a system user "
            f"'{PGSERVER_SYSTEM_USER}', and `useradd` was not found on PATH or in "
            f"{', '.join(_SBIN)}; create the user (`useradd {PGSERVER_SYSTEM_USER}`), run as "
            "another user, or set LEARNSTREAM_POSTGRES__URL"
        )
    done = subprocess.run(
        [useradd, "-s", "/bin/bash", PGSERVER_SYSTEM_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        pwd.getpwnam(PGSERVER_SYSTEM_USER)  # another process may have created it meanwhile
    except KeyError:
        raise ServiceUnavailableError(
            f"embedded PostgreSQL: could not create system user '{PGSERVER_SYSTEM_USER}' "
            f"({done.stderr.strip() or f'useradd exited with {done.returncode}'}); create it "
            "by hand, run as another user, or set LEARNSTREAM_POSTGRES__URL"
        ) from None


def _log_tail(folder: Path, lines: int = 3) -> str:
    try:
        text = (folder / "log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _forget_dead_handles(folder: Path) -> list[int]:
    """Drop the processes that died while attached from pgserver's list; returns their pids.

    pgserver lists the processes attached to a server in ``.handle_pids.json`` and stops the
    server when the last of them exits. One killed with -9 never removes itself, so without
    this the server would outlive every later process (an orphaned postmaster).
    """
    path = folder / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive = [p for p in pids if isinstance(p, int) and _running(p)]
    dead = [p for p in pids if p not in alive]
    if dead:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(alive))
        os.replace(tmp, path)
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def embedded_url(settings: Settings) -> str:
    """Start or attach to the embedded pgserver under ``settings.postgres_dir``; its URI.

    Works as root (pgserver runs PostgreSQL as the system user ``pgserver``, created here when
    missing) and as an ordinary user. A failure raises `ServiceUnavailableError` with one line
    saying why and what to do; pgserver's own log output is kept out of the console.
    """
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ServiceUnavailableError(
            "no PostgreSQL: set LEARNSTREAM_POSTGRES__URL, or install the embedded server with "
            "`pip install learnstream[embedded]`"
        ) from exc
    import subprocess

    folder = settings.postgres_dir.expanduser().resolve()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceUnavailableError(
            f"embedded PostgreSQL: cannot create {folder.parent} ({exc.strerror}); set "
            "LEARNSTREAM_POSTGRES__DIR or LEARNSTREAM_DATA_DIR to a writable folder"
        ) from None
    if os.geteuid() == 0:
        _prepare_root_user(dict(os.environ))
    dead = _forget_dead_handles(folder)
    if dead:
        log.info("embedded PostgreSQL: forgot %d process(es) that died attached to it", len(dead))
    pg_log = logging.getLogger("pgserver")
    pg_log.setLevel(logging.CRITICAL)  # it logs whole server logs at ERROR; we say it in one line
    try:
        # pgserver keeps one handle per folder for the life of the process (or until its
        # cleanup()); cleanup_mode "stop": the server stops when its last user process exits.
        server = pgserver.get_server(folder, cleanup_mode="stop")
        uri = str(server.get_uri())
    except (subprocess.SubprocessError, OSError, AssertionError, KeyError) as exc:
        if isinstance(exc, subprocess.CalledProcessError):
            why = f"{Path(str(exc.cmd[0])).name} exited with {exc.returncode}"
        elif isinstance(exc, subprocess.TimeoutExpired):
            why = f"{Path(str(exc.cmd[0])).name} timed out after {exc.timeout:g} s"
        else:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        tail = _log_tail(folder)
        raise ServiceUnavailableError(
            f"embedded PostgreSQL in {folder} did not start ({why})"
            + (f"; its log ends: {tail}" if tail else "")
            + "; remove the folder if it is corrupt, or set LEARNSTREAM_POSTGRES__URL"
        ) from None
    finally:
        pg_log.setLevel(logging.WARNING)  # its INFO lines at exit are noise
    log.info("embedded PostgreSQL in %s", folder)
    return uri


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and messages."""
    return re.sub(r"(://[^:/@?#]*:)[^@/?#]+@", r"\1***@", url)  # an empty one stays empty


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
