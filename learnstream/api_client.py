"""Talking to a running worker's HTTP API from the CLI (``status``, ``trigger``, ``patterns``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import click

from learnstream.core.settings import Settings


def worker_url(settings: Settings, url: str | None) -> str:
    """The worker's base URL: ``--url``, else the local worker on its configured web port."""
    return (url or f"http://127.0.0.1:{settings.worker.web_port}").rstrip("/")


def _call(request: urllib.request.Request) -> Any:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise click.ClickException(f"{request.full_url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach the worker at {request.full_url} ({exc}); is `learnstream worker` "
            "running? (--url or LEARNSTREAM_WORKER__WEB_PORT)"
        ) from None


def get_json(settings: Settings, path: str, url: str | None = None) -> Any:
    """GET a JSON document from the worker."""
    return _call(urllib.request.Request(worker_url(settings, url) + path))


def post_json(settings: Settings, path: str, body: Any, url: str | None = None) -> Any:
    """POST a JSON body to the worker and return its JSON answer."""
    headers = {"Content-Type": "application/json"}
    if settings.worker.token is not None:
        headers["Authorization"] = f"Bearer {settings.worker.token.get_secret_value()}"
    request = urllib.request.Request(
        worker_url(settings, url) + path,
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    return _call(request)


@dataclass(frozen=True)
class WorkerAnswer:
    """What a worker said to a GET, or why none answered.

    ``status`` is the HTTP status (0: nothing answered at ``url``); ``body`` the JSON answer
    (None if it was not JSON); ``detail`` one line on what went wrong, for messages.
    """

    url: str
    status: int
    body: Any = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx answer with a JSON object."""
        return 200 <= self.status < 300 and isinstance(self.body, dict)


def ask_worker(
    settings: Settings, path: str, url: str | None = None, timeout: float = 10.0
) -> WorkerAnswer:
    """GET ``path`` from the worker without raising: a command that can also work without a
    worker decides what to do with the answer (``status`` 0 when no worker listens)."""
    full = worker_url(settings, url) + path
    try:
        with urllib.request.urlopen(urllib.request.Request(full), timeout=timeout) as response:
            raw = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return WorkerAnswer(
            full, 0, detail=f"no worker answers at {worker_url(settings, url)} ({reason})"
        )
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    detail = (
        ""
        if 200 <= status < 300
        else f"the worker at {full} answered HTTP {status}" + (f": {error}" if error else "")
    )
    return WorkerAnswer(full, status, body, detail)
