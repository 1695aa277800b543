"""Tell inference servers about a newly active adapter (stdlib HTTP, no extra dependency).

* vLLM (``LEARNSTREAM_TRAINING__VLLM_SERVERS``): runtime LoRA updating, which the server must
  allow (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, started with ``--enable-lora``):
  ``POST {base}/v1/unload_lora_adapter {"lora_name"}`` (a 4xx answer means it was not
  loaded and is fine), then ``POST {base}/v1/load_lora_adapter {"lora_name", "lora_path"}``.
  Clients keep requesting ``model=<lora_name>`` and get the new adapter. When the bare base
  model becomes active (rollback past the first version) the adapter is only unloaded.
* Webhooks (``LEARNSTREAM_TRAINING__WEBHOOKS``): ``POST`` JSON
  ``{"event": "adapter_activated", "base_model", "version", "path", "lora_name", "metrics"}``.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other 4xx
answers are not. Failures are returned and logged; they never undo the activation.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from learnstream.core.settings import TrainingSettings

log = logging.getLogger("learnstream.trainers.hotswap")

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Notice:
    """What became active."""

    base_model: str
    version: int | None
    """None: the bare base model (no adapter)."""
    path: str | None
    """The adapter folder as the inference servers see it."""
    lora_name: str
    metrics: Mapping[str, float] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The webhook body."""
        return {
            "event": "adapter_activated",
            "base_model": self.base_model,
            "version": self.version,
            "path": self.path,
            "lora_name": self.lora_name,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class NotifyOutcome:
    """How one server took the notice."""

    target: str
    kind: Literal["vllm", "webhook"]
    ok: bool
    attempts: int
    duration_s: float
    error: str | None = None


class _HttpError(Exception):
    def __init__(self, message: str, *, retry: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.status = status


def served_path(settings: TrainingSettings, registry_root: Path, version_dir: Path) -> str:
    """``version_dir`` as the inference servers see it (``served_registry_dir`` mapping)."""
    if settings.served_registry_dir is None:
        return str(version_dir)
    return str(settings.served_registry_dir / version_dir.relative_to(registry_root))


def _post(url: str, body: Mapping[str, Any], timeout: float) -> None:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        retry = exc.code == 429 or exc.code >= 500
        raise _HttpError(
            f"HTTP {exc.code} from {url}: {detail}", retry=retry, status=exc.code
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _HttpError(f"{url}: {reason}", retry=True) from None


def _with_retries(
    action: Callable[[], None], settings: TrainingSettings, sleep: Sleep
) -> tuple[int, str | None]:
    """Run ``action`` with retries; (attempts, last error or None)."""
    attempts = 0
    delay = settings.hotswap_backoff_s
    while True:
        attempts += 1
        try:
            action()
            return attempts, None
        except _HttpError as exc:
            if not exc.retry or attempts > settings.hotswap_retries:
                return attempts, str(exc)
            log.info("hot-swap: %s; retrying in %.2fs", exc, delay)
            sleep(delay)
            delay *= 2


def notify_vllm(
    base_url: str, notice: Notice, settings: TrainingSettings, sleep: Sleep = time.sleep
) -> NotifyOutcome:
    """Unload then (unless the base model is active) load the adapter on one vLLM server."""
    started = time.perf_counter()
    timeout = settings.hotswap_timeout_s

    def unload() -> None:
        try:
            _post(f"{base_url}/v1/unload_lora_adapter", {"lora_name": notice.lora_name}, timeout)
        except _HttpError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                return  # not loaded: nothing to unload
            raise

    def load() -> None:
        _post(
            f"{base_url}/v1/load_lora_adapter",
            {"lora_name": notice.lora_name, "lora_path": notice.path},
            timeout,
        )

    attempts, error = _with_retries(unload, settings, sleep)
    if error is None and notice.version is not None:
        more, error = _with_retries(load, settings, sleep)
        attempts += more
    return NotifyOutcome(
        base_url, "vllm", error is None, attempts, time.perf_counter() - started, error
    )


def notify_webhook(
    url: str, notice: Notice, settings: TrainingSettings, sleep: Sleep = time.sleep
) -> NotifyOutcome:
    """POST the notice to one webhook."""
    started = time.perf_counter()
    attempts, error = _with_retries(
        lambda: _post(url, notice.payload(), settings.hotswap_timeout_s), settings, sleep
    )
    return NotifyOutcome(
        url, "webhook", error is None, attempts, time.perf_counter() - started, error
    )


def notify_all(
    settings: TrainingSettings, notice: Notice, sleep: Sleep = time.sleep
) -> list[NotifyOutcome]:
    """Notify every configured vLLM server and webhook, one after the other; never raises."""
    outcomes: list[NotifyOutcome] = []
    targets: list[tuple[str, Callable[..., NotifyOutcome]]] = [
        *((url, notify_vllm) for url in settings.vllm_servers),
        *((url, notify_webhook) for url in settings.webhooks),
    ]
    for url, notify in targets:
        try:
            outcome = notify(url, notice, settings, sleep)
        except Exception as exc:  # a bug must not undo a promotion either
            kind: Literal["vllm", "webhook"] = "vllm" if notify is notify_vllm else "webhook"
            outcome = NotifyOutcome(url, kind, False, 1, 0.0, f"{type(exc).__name__}: {exc}")
        if outcome.ok:
            log.info(
                "hot-swap: %s %s told about %s v%s (%d attempt(s))",
                outcome.kind,
                url,
                notice.base_model,
                notice.version,
                outcome.attempts,
            )
        else:
            log.error(
                "hot-swap: %s %s was not told about %s v%s after %d attempt(s): %s",
                outcome.kind,
                url,
                notice.base_model,
                notice.version,
                outcome.attempts,
                outcome.error,
            )
        outcomes.append(outcome)
    return outcomes


def summarize(outcomes: list[NotifyOutcome]) -> str:
    """One line for a result's reason, e.g. ``hot-swap: 1 of 2 servers failed (...)``."""
    if not outcomes:
        return "hot-swap: no inference servers configured"
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return f"hot-swap: {len(outcomes)} server(s) notified"
    details = "; ".join(f"{o.target}: {o.error}" for o in failed)
    return f"hot-swap: {len(failed)} of {len(outcomes)} server(s) failed ({details})"
