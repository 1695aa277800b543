"""The improvement API over HTTP with two workers in one group: the one that owns the base
model's state answers, the other redirects there (``307``, ``Location`` on the owner)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import FAST_FAILOVER_WORKER, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MODEL = "org/redirect-model"
PATH = "/api/v1/improvement/status?base_model=org%2Fredirect-model"


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx comes back as an HTTPError


def get(port: int, *, follow: bool) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of ``GET PATH`` on the worker at ``port``."""
    opener = urllib.request.build_opener(*(() if follow else (NoRedirects(),)))
    try:
        with opener.open(f"http://127.0.0.1:{port}{PATH}", timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")
    except OSError:  # not serving (yet)
        return 0, {}, None


def answers_now(workers: list[WorkerProcess]) -> dict[int, int]:
    return {w.port: get(w.port, follow=False)[0] for w in workers}


def test_the_worker_without_the_state_redirects_to_its_owner(
    kafka_broker: BrokerUnderTest, tmp_path: Path, unique: str
) -> None:
    env = {
        "LEARNSTREAM_BASE_MODEL": BASE_MODEL,
        "LEARNSTREAM_WORKER__EXTRACT": "false",
        "LEARNSTREAM_TRIGGERS__CHECK_INTERVAL_S": "1",  # the timer's tick creates the state
        **FAST_FAILOVER_WORKER,
    }
    app_id = f"redirect-{unique}"
    workers = [
        WorkerProcess(kafka_broker.bootstrap_servers, tmp_path / name, app_id=app_id, **env)
        for name in ("a", "b")
    ]
    try:

        def one_owner() -> Any:
            answers = {w.port: get(w.port, follow=False) for w in workers}
            if sorted(status for status, _, _ in answers.values()) == [200, 307]:
                return answers
            return None

        try:
            answers = wait_for(one_owner, 240, "one worker answering, the other redirecting")
        except AssertionError as exc:
            logs = "\n".join(w.log()[-2000:] for w in workers)
            raise AssertionError(f"{exc}: {answers_now(workers)}\n{logs}") from None
        (owner,) = (port for port, (status, _, _) in answers.items() if status == 200)
        (other,) = (port for port, (status, _, _) in answers.items() if status == 307)
        _, headers, body = answers[other]
        assert headers["Location"] == f"http://127.0.0.1:{owner}{PATH}"
        assert body["owner"] == headers["Location"]
        assert answers[owner][2]["base_model"] == BASE_MODEL
        # A client that follows redirects gets the owner's answer from either worker.
        status, _, followed = get(other, follow=True)
        assert status == 200 and followed["base_model"] == BASE_MODEL
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], "\n".join(w.log()[-3000:] for w in workers)
