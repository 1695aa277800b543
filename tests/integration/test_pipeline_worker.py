"""The worker's later stages: extract, pattern feedback, triggers, HTTP API.

One worker with its own base model name, low trigger thresholds and the heuristic extractor,
on a broker of this module's own (`module_broker`): the worker reads the registry's topics from
the start, so on the session broker it would first work through whatever the tests before it
(a different set on each xdist worker) left there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas.training import TrainingResult
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import Record, consume
from tests.integration.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
BASE_MODEL = f"test-model-{RUN}"
QUERIES = [
    "How do I write a pytest fixture that yields a database connection and closes it",
    "Configure a NixOS static IP address on the ens3 interface with networking.interfaces",
    "Rust: share a HashMap between threads with Arc and Mutex without deadlocks",
    "Kubernetes liveness probe for a Python HTTP service that restarts on hangs",
]
ANSWER = (
    "Here is how, step by step.\n1. Create it.\n2. Yield it.\n3. Close it.\n"
    "```python\n@pytest.fixture\ndef db():\n    conn = connect()\n    yield conn\n"
    "    conn.close()\n```\nThis keeps each test isolated."
)


def _ts(minutes: int) -> str:
    return (datetime(2021, 3, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def _high_value(n: int, query: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "task_completed",
        "event_id": f"hv{n}-{RUN}",
        "task_id": f"task{n}-{RUN}",
        "prompt": query,
        "output": ANSWER,
        "iteration": 1,
        "exit_code": 0,
        "user_feedback": 1,
        "context": {"files_modified": ["a.py", "b.py", "c.py", "d.py"], "tools_used": ["pytest"]},
        "timestamp": _ts(n),
        **extra,
    }


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, value, key=key)
    assert producer.flush(15) == 0


def _http(worker: WorkerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:  # not serving (yet)
        return 0, {}


def _wait(predicate: Any, timeout: float, what: str, worker: WorkerProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{worker.log()[-3000:]}")


@pytest.fixture(scope="module")
def worker(
    module_broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    w = WorkerProcess(
        module_broker.bootstrap_servers,
        tmp_path_factory.mktemp("pipeline"),
        app_id=f"pipeline-{RUN}",
        LEARNSTREAM_BASE_MODEL=BASE_MODEL,
        LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD="3",
        LEARNSTREAM_TRIGGERS__MIN_DATASET_SIZE="3",
        LEARNSTREAM_TRIGGERS__CHECK_INTERVAL_S="2",
    )
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def _ours(kind: str) -> Any:
    def keep(r: Record) -> bool:
        doc = r.json()
        if kind == "learned":
            return doc.get("event_id", "").endswith(RUN)
        return doc.get("base_model") == BASE_MODEL

    return keep


def test_candidates_become_patterns_dataset_rows_and_one_trigger(
    module_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    bootstrap = module_broker.bootstrap_servers
    events = [_high_value(n, q) for n, q in enumerate(QUERIES)]
    _produce(
        bootstrap,
        "telemetry.ralph",
        [(e["task_id"].encode(), json.dumps(e).encode()) for e in events],
    )

    learned = consume(
        bootstrap,
        ["patterns.learned"],
        keep=_ours("learned"),
        until=lambda kept: len(kept) >= len(QUERIES),
        timeout=180,
        settle=2,
    )
    assert sorted(r.json()["event_id"] for r in learned) == sorted(e["event_id"] for e in events)
    assert {r.json()["status"] for r in learned} == {"new"}
    assert all(r.json()["base_model"] == BASE_MODEL for r in learned)
    assert all(r.key == r.json()["pattern"]["pattern_id"].encode() for r in learned)

    dataset = worker.data_dir / "dataset" / "dataset.jsonl"
    # Only this test's examples (another test of this module may have added its own).
    lines = _wait(
        lambda: dataset.exists() and [x for x in dataset.read_text().splitlines() if RUN in x],
        30,
        "dataset",
        worker,
    )
    time.sleep(2)  # nothing more of ours arrives
    lines = [x for x in dataset.read_text().splitlines() if RUN in x]
    assert len(lines) == len(QUERIES)
    example = json.loads(lines[0])
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert example["metadata"]["source"] == "ralph"

    # 3 learnings fire once (threshold 3); the 4th arrives while that trigger is pending.
    triggers = consume(
        bootstrap,
        ["training.triggers"],
        keep=_ours("trigger"),
        until=lambda kept: len(kept) >= 1,
        timeout=60,
        settle=5,
    )
    assert len(triggers) == 1, [t.json() for t in triggers]
    trigger = triggers[0].json()
    assert trigger["reasons"] == ["learnings"] and trigger["learnings_since_training"] == 3
    assert triggers[0].key == BASE_MODEL.encode()

    status, body = _wait(
        lambda: (
            (s := _http(worker, f"/api/v1/improvement/status?base_model={BASE_MODEL}"))[1]
            and s[1].get("learnings_total") == 4
            and s
        ),
        30,
        "status",
        worker,
    )
    assert status == 200
    assert body["pending_trigger_id"] == trigger["trigger_id"]
    assert body["should_trigger"] is False and "waiting for the result" in body["reason"]

    # The trainer's result resets what the trigger counted and keeps the 4th learning.
    result = TrainingResult(
        trigger_id=trigger["trigger_id"],
        base_model=BASE_MODEL,
        status="promoted",
        reason="test",
        candidate_version=1,
        metrics={"relative_improvement": 0.05},
    )
    _produce(
        bootstrap, "training.results", [(BASE_MODEL.encode(), result.model_dump_json().encode())]
    )
    status, body = _wait(
        lambda: (
            (s := _http(worker, f"/api/v1/improvement/status?base_model={BASE_MODEL}"))[1].get(
                "pending_trigger_id"
            )
            is None
            and s
        ),
        60,
        "the result to be applied",
        worker,
    )
    assert body["learnings_since_training"] == 1
    assert body["active_version"] == 1 and body["improvement_score"] == pytest.approx(0.05)
    assert body["runs"] == {"promoted": 1}

    code, recent = _http(worker, f"/api/v1/learnings/recent?base_model={BASE_MODEL}&limit=2")
    assert code == 200 and len(recent["recent"]) == 2
    code, stats = _http(worker, f"/api/v1/feedback/statistics?base_model={BASE_MODEL}")
    assert code == 200 and stats["scored_total"] >= 4

    # A manual trigger through the HTTP API.
    code, answer = _http(worker, "/api/v1/improvement/trigger", {"base_model": BASE_MODEL})
    assert code == 202 and answer["accepted"]
    manual = consume(
        bootstrap,
        ["training.triggers"],
        keep=lambda r: _ours("trigger")(r) and r.json()["reasons"] == ["manual"],
        until=lambda kept: len(kept) >= 1,
        timeout=60,
    )
    assert manual[0].json()["requested_by"] == answer["request_id"]

    # The CLI equivalents talk to the same API.
    url = f"http://127.0.0.1:{worker.port}"
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", "status", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["base_model"] == BASE_MODEL and shown["runs"] == {"promoted": 1}
    down = subprocess.run(
        [sys.executable, "-m", "learnstream", "trigger", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1 and "cannot reach the worker" in down.stderr


def test_replaying_candidates_changes_nothing_and_feedback_updates_patterns(
    module_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    bootstrap = module_broker.bootstrap_servers
    candidates = consume(
        bootstrap,
        ["patterns.candidates"],
        keep=lambda r: r.key is not None and r.key.decode().endswith(RUN),
        until=lambda kept: len(kept) >= len(QUERIES),
        timeout=120,
    )
    dataset = worker.data_dir / "dataset" / "dataset.jsonl"
    before = dataset.read_bytes()
    _produce(bootstrap, "patterns.candidates", [(r.key or b"", r.value) for r in candidates])
    marker = _high_value(99, "Write a Go HTTP middleware that logs request latency")
    _produce(bootstrap, "telemetry.ralph", [(b"m", json.dumps(marker).encode())])
    # The marker is learned after the replayed candidates (same partition order is not
    # guaranteed, so wait for it and then let the replay settle too).
    learned = consume(
        bootstrap,
        ["patterns.learned"],
        keep=_ours("learned"),
        until=lambda kept: any(r.json()["event_id"] == marker["event_id"] for r in kept),
        timeout=120,
        settle=5,
    )
    repeats = [r for r in learned if r.json()["event_id"] != marker["event_id"]]
    assert len(repeats) == len(QUERIES)  # only the first run's records: the replay emitted none
    after = dataset.read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 1

    # Feedback: an interaction that used a pattern and succeeded raises its confidence.
    pattern = repeats[0].json()["pattern"]
    used = _high_value(
        120,
        "Another question entirely about CSS grid layouts",
        patterns_used=[pattern["pattern_id"]],
    )
    _produce(bootstrap, "telemetry.ralph", [(b"u", json.dumps(used).encode())])

    def updated() -> Any:
        _code, top = _http(worker, "/api/v1/patterns/top?limit=100")
        found = [p for p in top.get("patterns", []) if p["pattern_id"] == pattern["pattern_id"]]
        return found and found[0]["confidence"] > pattern["confidence"] and found[0]

    after_feedback = _wait(updated, 60, "pattern feedback", worker)
    assert after_feedback["usage_count"] == pattern["usage_count"] + 1
    # The feedback event is high-value too: it is learned like any other.
    consume(
        bootstrap,
        ["patterns.learned"],
        keep=_ours("learned"),
        until=lambda kept: any(r.json()["event_id"] == used["event_id"] for r in kept),
        timeout=120,
    )
    assert worker.metric("learnstream_dlq_total", stage="extract") == 0


def test_improvement_state_survives_a_worker_restart_without_new_triggers(
    module_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    path = f"/api/v1/improvement/status?base_model={BASE_MODEL}"
    learned = consume(
        module_broker.bootstrap_servers,
        ["patterns.learned"],
        keep=_ours("learned"),
        until=lambda kept: len(kept) >= len(QUERIES),
        timeout=60,
        settle=3,
    )
    count = len({r.json()["event_id"] for r in learned})
    # Every learning published so far is counted before the restart.
    _code, before = _wait(
        lambda: (s := _http(worker, path))[1].get("learnings_total") == count and s,
        60,
        f"{count} learnings counted",
        worker,
    )
    assert worker.stop() == 0, worker.log()[-3000:]
    if module_broker.kind == "kafka":
        # Faust declared its table's changelog itself (topic_allow_declare): compacted, so the
        # state it recovers from below is the latest value per key, kept forever.
        from confluent_kafka.admin import AdminClient, ConfigResource

        changelog = f"pipeline-{RUN}-improvement-changelog"
        admin = AdminClient({"bootstrap.servers": module_broker.bootstrap_servers})
        (future,) = admin.describe_configs([ConfigResource("topic", changelog)]).values()
        config = {k: v.value for k, v in future.result(15).items()}
        assert config["cleanup.policy"] == "compact", config
        topic = admin.list_topics(changelog, timeout=10).topics[changelog]
        assert topic.error is None and len(topic.partitions) == 1, topic

    # Same group, same data dir: the table is recovered from its changelog topic.
    again = WorkerProcess(
        module_broker.bootstrap_servers,
        worker.data_dir,
        app_id=f"pipeline-{RUN}",
        LEARNSTREAM_BASE_MODEL=BASE_MODEL,
        LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD="3",
        LEARNSTREAM_TRIGGERS__MIN_DATASET_SIZE="3",
        LEARNSTREAM_TRIGGERS__CHECK_INTERVAL_S="2",
    )
    try:
        _code, after = _wait(
            lambda: (s := _http(again, path))[0] == 200 and s, 120, "recovered state", again
        )
        for field in ("learnings_total", "learnings_since_training", "sequence", "runs"):
            assert after[field] == before[field], field
        assert after["pending_trigger_id"] == before["pending_trigger_id"]
        time.sleep(6)  # a few timer ticks
        triggers = consume(
            module_broker.bootstrap_servers,
            ["training.triggers"],
            keep=_ours("trigger"),
            until=lambda kept: False,
            timeout=8,
        )
        ids = {t.json()["trigger_id"] for t in triggers}
        assert len(ids) == after["sequence"], [t.json() for t in triggers]
    finally:
        assert again.stop() == 0, again.log()[-3000:]
