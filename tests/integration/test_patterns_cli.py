"""`learnstream patterns search|top` while a worker holds the pattern store, as a user runs them.

The worker holds the local Qdrant folder (one process at a time); the CLI, with the same data
directory and web port, asks the worker instead: it loads no model (its own embedding model
setting is broken on purpose) and prints the worker's patterns. With another data directory
it does not take the worker's answer; with the web port elsewhere it says in one line that
the store is held; once the worker is gone it opens the store itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from learnstream.core.net import free_port
from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
QUERIES = [
    f"Configure a NixOS static IP address on the ens3 interface ({RUN})",
    f"Rust: share a HashMap between threads with Arc and Mutex without deadlocks ({RUN})",
]
ANSWER = (
    "Here is how, step by step.\n1. Declare it.\n2. Apply it.\n3. Check it.\n"
    '```nix\nnetworking.interfaces.ens3.ipv4.addresses = [ { address = "10.0.0.2"; } ];\n```\n'
    "This keeps the address across reboots."
)


def _event(n: int, query: str) -> dict[str, Any]:
    return {
        "event": "task_completed",
        "event_id": f"pq{n}-{RUN}",
        "task_id": f"pq-task{n}-{RUN}",
        "prompt": query,
        "output": ANSWER,
        "iteration": 1,
        "exit_code": 0,
        "user_feedback": 1,
        "context": {"files_modified": ["a.nix", "b.nix", "c.nix", "d.nix"], "tools_used": ["nix"]},
        "timestamp": (datetime(2021, 5, 1, tzinfo=UTC) + timedelta(minutes=n)).isoformat(),
    }


@pytest.fixture(scope="module")
def worker(
    module_broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    # A broker of its own: the pipeline tests' workers read the shared topics from the start.
    w = WorkerProcess(
        module_broker.bootstrap_servers,
        tmp_path_factory.mktemp("patterns-cli"),
        app_id=f"patterns-cli-{RUN}",
        LEARNSTREAM_BASE_MODEL=f"patterns-cli-{RUN}",
    )
    yield w
    w.stop()


def _ours(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    """Our patterns by source query, from the worker's API (empty while it starts)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.port}/api/v1/patterns/top?limit=1000", timeout=10
        ) as r:
            found = json.loads(r.read())["patterns"]
    except OSError:
        return {}
    return {p["source_query"]: p for p in found if RUN in p.get("source_query", "")}


def _cli(data_dir: Path, port: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    full.update(LEARNSTREAM_DATA_DIR=str(data_dir), LEARNSTREAM_WORKER__WEB_PORT=str(port), **env)
    return subprocess.run(
        [sys.executable, "-m", "learnstream", "patterns", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_patterns_search_and_top_while_the_worker_runs_and_after(
    module_broker: BrokerUnderTest, worker: WorkerProcess, tmp_path: Path
) -> None:
    producer = Producer({"bootstrap.servers": module_broker.bootstrap_servers})
    for n, query in enumerate(QUERIES):
        event = _event(n, query)
        producer.produce("telemetry.ralph", json.dumps(event).encode(), key=event["task_id"])
    assert producer.flush(15) == 0
    ours = wait_for(
        lambda: len(found := _ours(worker)) == len(QUERIES) and found,
        180,
        f"our patterns on the worker; its log:\n{worker.log()[-3000:]}",
    )
    wanted = ours[QUERIES[0]]
    no_model = {"LEARNSTREAM_EMBEDDING__MODEL": "/nonexistent/model"}  # a load would fail

    # The same data directory and web port: the worker answers, the CLI loads no model.
    search = _cli(worker.data_dir, worker.port, "search", QUERIES[0], "--limit", "5", **no_model)
    assert search.returncode == 0, search.stderr
    assert search.stderr == ""
    assert f"id {wanted['pattern_id']})" in search.stdout
    first = search.stdout.splitlines()[0]
    assert 0.0 < float(first.split()[0]) <= 1.0  # the cosine heads each hit
    top = _cli(worker.data_dir, worker.port, "top", "--limit", "1000", **no_model)
    assert top.returncode == 0, top.stderr
    assert all(f"id {p['pattern_id']})" in top.stdout for p in ours.values()), top.stdout
    # The worker's search page itself, as an API user sees it.
    query = urllib.parse.urlencode({"q": QUERIES[1], "limit": 2})
    url = f"http://127.0.0.1:{worker.port}/api/v1/patterns/search?{query}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["store"] == str((worker.data_dir / "qdrant").resolve())
    assert ours[QUERIES[1]]["pattern_id"] in [h["pattern"]["pattern_id"] for h in body["patterns"]]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.split("?", maxsplit=1)[0], timeout=10)
    assert refused.value.code == 400  # no ?q=

    # The dataset commands read the JSONL file the worker appends to: no store to share.
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    full["LEARNSTREAM_DATA_DIR"] = str(worker.data_dir)
    done = {}
    for command in ("stats", "validate"):
        done[command] = subprocess.run(
            [sys.executable, "-m", "learnstream", "dataset", command],
            env=full,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done[command].returncode == 0, done[command].stdout + done[command].stderr
    assert json.loads(done["stats"].stdout)["valid"] >= len(QUERIES)

    # Another data directory: the worker's patterns are not this store's.
    other = _cli(tmp_path / "other", worker.port, "top", **no_model)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "no patterns yet"

    # The worker's store, but not its web port: one line, no traceback.
    held = _cli(worker.data_dir, free_port(), "search", QUERIES[0], **no_model)
    assert held.returncode == 1 and "Traceback" not in held.stderr, held.stderr
    assert len(held.stderr.strip().splitlines()) == 1, held.stderr
    assert "held by another process" in held.stderr and "no worker answers" in held.stderr

    # The worker is gone: the CLI opens the store itself (and loads the model).
    assert worker.stop() == 0, worker.log()[-3000:]
    alone = _cli(worker.data_dir, worker.port, "search", QUERIES[0], "--limit", "5")
    assert alone.returncode == 0, alone.stderr
    assert f"id {wanted['pattern_id']})" in alone.stdout
