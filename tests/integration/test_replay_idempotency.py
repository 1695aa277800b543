"""Proof of idempotency: run the pipeline, replay every topic from the start, compare.

A worker and a sink process this test's events; then both stop, `learnstream replay` moves
their groups back to the start of every topic they read, and they run again over everything.
PostgreSQL rows, Qdrant points (both collections, with payloads and vectors) and the dataset
lines of this test's events must be identical before and after; the dataset file is only
ever appended to and never holds a line twice.

The test's events go to one partition (one session key) with timestamps older than any other
test's. The scores would be the same in any processing order (the watermark, see
test_replay_determinism.py); this test is about the stores: rows, points and dataset lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from learnstream.postgres import connect
from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import Sink, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
TOPICS_READ_BY_WORKER = (
    "telemetry.ralph",
    "telemetry.aidb",
    "telemetry.hybrid",
    "telemetry.vscode",
    "interactions.scored",
    "patterns.candidates",
    "patterns.learned",
)
QUERIES = [
    "How do I paginate a PostgreSQL query with keyset pagination",
    "Keyset pagination in PostgreSQL for a large table",
    "Explain Python asyncio task cancellation and shielding",
    "Write a Dockerfile for a Go service with a multi-stage build",
    "How do I paginate PostgreSQL results efficiently without OFFSET",
    "Set up a GitHub Actions matrix for Python 3.11 and 3.12",
]
ANSWER = (
    "Use a WHERE clause on the last seen key and an index, step by step:\n"
    "1. Order by the key.\n2. Remember the last key.\n"
    "```sql\nSELECT * FROM t WHERE id > $1 ORDER BY id LIMIT 50;\n```\nThis avoids OFFSET scans."
)
COLUMNS = (
    "event_id, source, event_type, event_time, record_key, scorable, outcome, payload, "
    "interaction, score, factors, weights, inputs, threshold, high_value, scorer_version"
)


def _events() -> list[dict[str, Any]]:
    t0 = datetime(2019, 1, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for n, query in enumerate(QUERIES):
        at = (t0 + timedelta(minutes=2 * n)).isoformat()
        done = (t0 + timedelta(minutes=2 * n + 1)).isoformat()
        base = {"session_id": f"replay-{RUN}", "query": query}
        events.append({**base, "event_type": "query", "event_id": f"q{n}-{RUN}", "timestamp": at})
        if n % 3 == 2:
            events.append(
                {**base, "event_type": "error", "event_id": f"e{n}-{RUN}", "error": "timeout",
                 "timestamp": done}
            )  # fmt: skip
        else:
            events.append(
                {**base, "event_type": "completion", "event_id": f"c{n}-{RUN}", "response": ANSWER,
                 "success": True, "user_feedback": 1, "timestamp": done}
            )  # fmt: skip
    return events


def _rows(pg_url: str, ids: list[str]) -> list[tuple[Any, ...]]:
    with connect(pg_url) as conn:
        return conn.execute(
            f"SELECT {COLUMNS} FROM telemetry_events WHERE event_id = ANY(%s) ORDER BY event_id",
            (ids,),
        ).fetchall()


def _scored_at(pg_url: str, ids: list[str]) -> list[datetime]:
    import psycopg

    try:
        with connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT scored_at FROM telemetry_events WHERE event_id = ANY(%s)", (ids,)
            ).fetchall()
    except psycopg.errors.UndefinedTable:  # the sink has not applied its migrations yet
        return []
    return [r[0] for r in rows]


def _points(data_dir: Path) -> dict[str, dict[str, tuple[str, list[float]]]]:
    """This test's points per collection: id -> (payload JSON, vector)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(data_dir / "qdrant"))
    try:
        out: dict[str, dict[str, tuple[str, list[float]]]] = {}
        for name in ("interaction-history", "skills-patterns"):
            points, offset = [], None
            while True:
                page, offset = client.scroll(name, limit=256, offset=offset, with_vectors=True)
                points.extend(page)
                if offset is None:
                    break
            # Only this test's points (its broker is its own; the filter keeps that explicit).
            out[name] = {
                str(p.id): (json.dumps(p.payload, sort_keys=True), list(p.vector))  # type: ignore[arg-type]
                for p in points
                if RUN in json.dumps(p.payload)
            }
        return out
    finally:
        client.close()


def _same_points(
    a: dict[str, tuple[str, list[float]]], b: dict[str, tuple[str, list[float]]]
) -> bool:
    """Same ids and payloads; vectors equal up to float noise (batch padding changes low bits)."""
    import numpy as np

    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and np.allclose(a[k][1], b[k][1], atol=1e-5) for k in a
    )


def _replay(bootstrap: str, group: str, topics: tuple[str, ...]) -> None:
    args = [sys.executable, "-m", "learnstream", "replay", "--group", group, "--to-start"]
    for topic in topics:
        args += ["--topic", topic]
    env = {**os.environ, "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    out = subprocess.run(
        [*args, "--force"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_replaying_every_topic_from_the_start_changes_nothing(
    own_broker: BrokerUnderTest, postgres_url: str, tmp_path: Path
) -> None:
    # A broker of its own: on the shared one, the worker's first pass also works through every
    # other test's backlog, and the watermark's bounded wait may release (and flag) some of
    # this test's events early on one pass and not on the other.
    bootstrap = own_broker.bootstrap_servers
    events = _events()
    ids = [e["event_id"] for e in events]
    app_id, sink_group = f"replay-w-{RUN}", f"replay-s-{RUN}"
    data_dir = tmp_path / "worker"

    producer = Producer({"bootstrap.servers": bootstrap})
    for e in events:
        producer.produce("telemetry.aidb", json.dumps(e).encode(), key=e["session_id"].encode())
    assert producer.flush(15) == 0

    def run_once() -> tuple[list[tuple[Any, ...]], bytes, dict[str, Any], datetime]:
        started = datetime.now(UTC)
        # Default dataset balance: near-duplicate answers are skipped, and a replay must
        # repeat those decisions exactly (they are durable per event id).
        worker = WorkerProcess(bootstrap, data_dir, app_id=app_id)
        sink = Sink(bootstrap, postgres_url, sink_group, tmp_path / "sink.log")
        try:
            # Every row (re)written by this run, then the dataset quiet for a while.
            wait_for(
                lambda: (
                    (at := _scored_at(postgres_url, ids))
                    and len(at) == len(ids)
                    and min(at) > started
                ),
                240,
                "PostgreSQL rows from this run",
            )
            dataset = data_dir / "dataset" / "dataset.jsonl"
            last: list[Any] = [None, time.monotonic()]

            def quiet() -> bool:
                size = dataset.stat().st_size if dataset.exists() else -1
                if size != last[0]:
                    last[:] = [size, time.monotonic()]
                return size > 0 and time.monotonic() - last[1] > 8

            wait_for(quiet, 120, "the dataset to settle")
        finally:
            codes = (sink.stop(), worker.stop())
        assert codes == (0, 0), worker.log()[-3000:]
        return _rows(postgres_url, ids), dataset.read_bytes(), _points(data_dir), started

    rows1, data1, points1, _ = run_once()
    assert len(rows1) == len(ids)
    assert sum(1 for r in rows1 if r[14]) >= 2  # some high-value interactions were extracted
    assert data1.count(b"\n") >= 2 and points1["skills-patterns"]

    _replay(bootstrap, app_id, TOPICS_READ_BY_WORKER)
    _replay(bootstrap, sink_group, ("interactions.scored",))
    rows2, data2, points2, _ = run_once()

    assert rows2 == rows1  # same scores, factors, inputs, payloads
    for name in points1:  # same points, payloads and vectors in both collections
        assert points1[name] and _same_points(points1[name], points2[name]), name
    # The dataset: nothing rewritten, no line twice, this test's examples byte-identical.
    assert data2.startswith(data1)
    lines = data2.splitlines()
    assert len(lines) == len(set(lines))
    assert [x for x in data1.splitlines() if RUN.encode() in x] == [
        x for x in lines if RUN.encode() in x
    ]
