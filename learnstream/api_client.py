"""Talking to a running worker's HTTP API from the CLI (``learnstream status`` / ``trigger``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import click

from learnstream.settings import Settings


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
