"""The real Faust worker on the dev broker: scores, candidates, dead letters, replay, groups."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import Record, consume
from tests.integration.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODE_ANSWER = (
    "Use a fixture that yields a consumer and closes it after the test, so each test gets a "
    "clean group.\n```python\n@pytest.fixture\ndef consumer():\n    c = make()\n    yield c\n"
    "    c.close()\n```"
)


def _ts(minutes: int) -> str:
    # Long before anything else on the shared broker, so no other test's event is "earlier".
    return (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def _send(bootstrap: str, source: str, events: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for ev in events:
        key = ev.get("task_id") or ev.get("session_id") or ev.get("conversation_id") or ""
        producer.produce(f"telemetry.{source}", json.dumps(ev).encode(), key=str(key).encode())
    assert producer.flush(15) == 0


def _send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        producer.produce(topic, v, key=b"poison")
    assert producer.flush(15) == 0


def _scored(
    bootstrap: str,
    ids: set[str],
    *,
    topic: str = "interactions.scored",
    timeout: float = 120,
    settle: float = 1.0,
) -> list[Record]:
    return consume(
        bootstrap,
        [topic],
        keep=lambda r: r.key is not None and r.key.decode() in ids,
        until=lambda kept: len({r.key for r in kept}) >= len(ids),
        timeout=timeout,
        settle=settle,
    )


@pytest.fixture(scope="module")
def worker(
    kafka_broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    w = WorkerProcess(
        kafka_broker.bootstrap_servers,
        tmp_path_factory.mktemp("worker"),
        app_id=f"score-test-{uuid.uuid4().hex[:6]}",
    )
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def test_every_source_is_scored_as_specified(
    kafka_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    run = uuid.uuid4().hex[:8]
    ids = {name: f"{name}-{run}" for name in "ABCDE"}
    _send(
        kafka_broker.bootstrap_servers,
        "ralph",
        [
            {
                "event": "task_completed",
                "event_id": ids["A"],
                "task_id": f"t-{run}",
                "prompt": "Write a pytest fixture that provides an isolated Kafka consumer",
                "output": CODE_ANSWER,
                "iteration": 2,
                "exit_code": 0,
                "user_feedback": 1,
                "context": {
                    "files_modified": ["a.py", "b.py", "c.py", "d.py"],
                    "tools_used": ["pytest"],
                    "steps": 3,
                },
                "timestamp": _ts(1),
            },
            {
                "event": "iteration_started",
                "event_id": ids["E"],
                "task_id": f"t-{run}",
                "iteration": 1,
                "timestamp": _ts(0),
            },
        ],
    )
    _send(
        kafka_broker.bootstrap_servers,
        "aidb",
        [
            {
                "event_type": "error",
                "event_id": ids["B"],
                "session_id": f"s-{run}",
                "query": "Why does my Rust borrow checker reject two mutable references?",
                "error": "context length exceeded",
                "timestamp": _ts(2),
            }
        ],
    )
    _send(
        kafka_broker.bootstrap_servers,
        "hybrid",
        [
            {
                "event": "route_decided",
                "event_id": ids["C"],
                "conversation_id": f"c-{run}",
                "query": "Summarize the GDPR obligations of a small bakery",
                "route": "remote",
                "success": False,
                "user_feedback": -1,
                "timestamp": _ts(3),
            }
        ],
    )
    _send(
        kafka_broker.bootstrap_servers,
        "vscode",
        [
            {
                "event_type": "completion",
                "event_id": ids["D"],
                "session_id": f"v-{run}",
                "prompt": "Convert this Celsius temperature to Fahrenheit in JavaScript",
                "completion": "const f = c * 9 / 5 + 32;",
                "success": True,
                "copied_to_clipboard": True,
                "timestamp": _ts(4),
            }
        ],
    )

    by_id = {
        r.key.decode(): r.json() for r in _scored(kafka_broker.bootstrap_servers, set(ids.values()))
    }
    assert set(by_id) == set(ids.values())
    a = by_id[ids["A"]]
    # outcome 1.0 (2 iterations), feedback 1.0, reusability 0.3, complexity 0.3+0.2+0.3+0.2,
    # novelty 1.0: 0.4 + 0.2 + 0.06 + 0.1 + 0.1
    assert a["score"] == pytest.approx(0.86)
    assert a["factors"] == {
        "schema_version": 1,
        "outcome": 1.0,
        "feedback": 1.0,
        "reusability": 0.3,
        "complexity": 1.0,
        "novelty": 1.0,
    }
    assert a["high_value"] is True and a["scorer_version"] == "2.0"
    assert a["inputs"]["reusability"]["similar_earlier"] == 0
    assert by_id[ids["B"]]["score"] == pytest.approx(0.34)  # 0.08 + 0.1 + 0.06 + 0 + 0.1
    assert by_id[ids["C"]]["score"] == pytest.approx(0.24)  # 0.08 + 0 + 0.06 + 0 + 0.1
    assert by_id[ids["D"]]["score"] == pytest.approx(0.72)  # 0.4 + 0.16 + 0.06 + 0 + 0.1
    lifecycle = by_id[ids["E"]]
    assert lifecycle["score"] is None and lifecycle["factors"] is None
    assert lifecycle["interaction"]["scorable"] is False

    candidates = _scored(
        kafka_broker.bootstrap_servers,
        {ids["A"], ids["D"]},
        topic="patterns.candidates",
        settle=3.0,
    )
    assert sorted(r.key.decode() for r in candidates) == sorted([ids["A"], ids["D"]])
    assert worker.metric("learnstream_high_value_total", source="ralph") >= 1


def test_reusability_counts_only_earlier_similar_queries_and_replays_identically(
    kafka_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    run = uuid.uuid4().hex[:8]
    query = f"How do I give eth0 a static IP address in NixOS? ({run[:0]})"
    series = [
        {
            "event_type": "completion",
            "event_id": f"R{i}-{run}",
            "session_id": f"r-{run}",
            "query": query,
            "response": "Set networking.interfaces.eth0.ipv4.addresses.",
            "success": True,
            "timestamp": _ts(100 + i),
        }
        for i in range(6)
    ]
    # Sent newest first: the score depends on event time, not arrival order.
    _send(kafka_broker.bootstrap_servers, "aidb", list(reversed(series)))
    ids = {e["event_id"] for e in series}
    first = {r.key.decode(): r.json() for r in _scored(kafka_broker.bootstrap_servers, ids)}
    expected_similar = [0, 1, 2, 3, 4, 5]
    got_similar = [
        first[f"R{i}-{run}"]["inputs"]["reusability"]["similar_earlier"] for i in range(6)
    ]
    assert got_similar == expected_similar
    # 0.4 + 0.1 + 0.2·reusability + 0 + 0.1·novelty, reusability 0.3/0.5/0.5/0.7/0.7/1.0.
    # R1 is the first high-value one (novelty 1.0: R0 was not high value); from R2 on the
    # same question is known knowledge (cosine 1.0 to R1: novelty 0).
    assert [first[f"R{i}-{run}"]["score"] for i in range(6)] == pytest.approx(
        [0.66, 0.70, 0.60, 0.64, 0.64, 0.70]
    )
    assert [first[f"R{i}-{run}"]["factors"]["novelty"] for i in range(6)] == [1.0, 1.0] + [0.0] * 4
    assert [first[f"R{i}-{run}"]["high_value"] for i in range(6)] == [
        False,
        True,
        False,
        False,
        False,
        True,
    ]

    # Replay: the same events again are scored exactly the same.
    _send(kafka_broker.bootstrap_servers, "aidb", series)
    both = consume(
        kafka_broker.bootstrap_servers,
        ["interactions.scored"],
        keep=lambda r: r.key is not None and r.key.decode() in ids,
        until=lambda kept: len(kept) >= 12,
        timeout=120,
        settle=1.0,
    )
    assert len(both) == 12
    for event_id in ids:
        copies = [r.json() for r in both if r.key.decode() == event_id]
        for c in copies:
            c.pop("scored_at")
        assert copies[0] == copies[1]


def test_poison_messages_go_to_the_dlq_and_the_agent_keeps_going(
    kafka_broker: BrokerUnderTest, worker: WorkerProcess
) -> None:
    run = uuid.uuid4().hex[:8]
    poison = [
        b"\x00\xffnot json " + run.encode(),
        json.dumps(
            {
                "event": "task_completed",
                "task_id": run,
                "iteration": "many",
                "prompt": "p",
                "timestamp": _ts(5),
            }
        ).encode(),
    ]
    _send_raw(kafka_broker.bootstrap_servers, "telemetry.ralph", poison)
    after = f"after-{run}"
    _send(
        kafka_broker.bootstrap_servers,
        "ralph",
        [
            {
                "event": "task_submitted",
                "event_id": after,
                "task_id": run,
                "prompt": "p",
                "timestamp": _ts(6),
            }
        ],
    )
    assert _scored(kafka_broker.bootstrap_servers, {after})
    letters = consume(
        kafka_broker.bootstrap_servers,
        ["telemetry.dlq"],
        keep=lambda r: (
            r.json().get("stage") == "score"
            and base64.b64decode(r.json()["original_b64"]) in poison
        ),
        until=lambda kept: len(kept) >= 2,
        timeout=60,
    )
    by_kind = {r.json()["error_kind"]: r.json() for r in letters}
    assert by_kind["malformed"]["topic"] == "telemetry.ralph"
    assert by_kind["malformed"]["offset"] is not None
    assert "not UTF-8" in by_kind["malformed"]["error"]
    assert "field 'iteration'" in by_kind["invalid"]["error"]
    assert all(r.key == b"poison" for r in letters)
    assert worker.metric("learnstream_dlq_total", stage="score") >= 2


def test_scaling_out_and_in_keeps_every_event_without_conflicting_outputs(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    app_id = f"pair-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:8]
    workers = [WorkerProcess(kafka_broker.bootstrap_servers, tmp_path / "w0", app_id=app_id)]
    try:
        # Scale out as an operator would: the second worker joins once the first is running.
        marker = f"marker-{run}"
        _send(
            kafka_broker.bootstrap_servers,
            "vscode",
            [
                {
                    "event_type": "session_started",
                    "event_id": marker,
                    "session_id": marker,
                    "timestamp": _ts(7),
                }
            ],
        )
        assert _scored(kafka_broker.bootstrap_servers, {marker}, timeout=180)
        workers.append(
            WorkerProcess(kafka_broker.bootstrap_servers, tmp_path / "w1", app_id=app_id)
        )

        def both_working() -> bool:
            # Keys spread over every partition; each worker must have scored some.
            probes = [
                {
                    "event_type": "session_started",
                    "event_id": f"probe{i}-{run}-{time.time()}",
                    "session_id": f"probe{i}",
                    "timestamp": _ts(7),
                }
                for i in range(16)
            ]
            _send(kafka_broker.bootstrap_servers, "vscode", probes)
            time.sleep(2)
            return all(
                w.metric(
                    "learnstream_events_consumed_total",
                    source="vscode",
                    event_type="session_started",
                )
                > 0
                for w in workers
            )

        deadline = time.monotonic() + 180
        while not both_working():
            assert time.monotonic() < deadline, [w.log()[-2000:] for w in workers]
        before = [
            w.metric(
                "learnstream_events_consumed_total",
                wait_s=30,  # a busy worker's page answering late is not a share of 0
                source="vscode",
                event_type="session_started",
            )
            for w in workers
        ]
        events = [
            {
                "event_type": "session_started",
                "event_id": f"P{i}-{run}",
                "session_id": f"p{i}-{run}",
                "timestamp": _ts(8),
            }
            for i in range(200)
        ]
        _send(kafka_broker.bootstrap_servers, "vscode", events)
        ids = {e["event_id"] for e in events}
        got = _scored(kafka_broker.bootstrap_servers, ids, timeout=120, settle=3.0)
        keys = [r.key.decode() for r in got]
        assert set(keys) == ids  # no gaps
        # Delivery is at-least-once: a rebalance while the batch is in flight makes the new
        # owner re-score what the old one had not committed yet. Such repeats must be the same
        # record (same event id, same score), which every sink upserts by event id.
        by_id: dict[str, set[tuple[Any, Any]]] = {}
        for r in got:
            doc = r.json()
            by_id.setdefault(r.key.decode(), set()).add(
                (doc["interaction"]["event_id"], doc.get("score"))
            )
        assert all(len(v) == 1 for v in by_id.values()), by_id
        after = [
            w.metric(
                "learnstream_events_consumed_total",
                wait_s=30,  # a busy worker's page answering late is not a share of 0
                source="vscode",
                event_type="session_started",
            )
            for w in workers
        ]
        shares = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(shares) >= 200 and all(s > 0 for s in shares), shares

        # Scale in: stop one worker; the other takes over its partitions, nothing is lost.
        stopped = workers[0].stop()
        assert stopped == 0, workers[0].log()[-2000:]
        rest = [
            {
                "event_type": "session_started",
                "event_id": f"S{i}-{run}",
                "session_id": f"s{i}-{run}",
                "timestamp": _ts(9),
            }
            for i in range(100)
        ]
        _send(kafka_broker.bootstrap_servers, "vscode", rest)
        rest_ids = {e["event_id"] for e in rest}
        got = _scored(kafka_broker.bootstrap_servers, rest_ids, timeout=120)
        assert {r.key.decode() for r in got} == rest_ids  # no gaps after the scale-in
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0] * len(workers)


def test_sigterm_stops_the_worker_in_bounded_time_with_the_broker_gone(tmp_path: Path) -> None:
    """The broker dies under a running worker; SIGTERM still ends it within its bound."""
    import signal
    import subprocess
    import urllib.request

    from tests.integration.conftest import DevBrokerProcess

    broker = DevBrokerProcess(tmp_path / "broker")
    worker = WorkerProcess(
        broker.bootstrap_servers,
        tmp_path / "w",
        app_id=f"gone-{uuid.uuid4().hex[:8]}",
        LEARNSTREAM_WORKER__SHUTDOWN_TIMEOUT_S="5",
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        broker.proc.kill()  # the broker is gone, for good
        broker.proc.wait(10)
        time.sleep(3)  # the worker notices and starts retrying
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(5 + 15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker ignored SIGTERM: {worker.log()[-2000:]}") from None
        assert code in (0, 1), worker.log()[-2000:]
        assert time.monotonic() - started < 5 + 15
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.stop()
        if broker.proc.poll() is None:
            broker.proc.kill()
