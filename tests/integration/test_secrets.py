"""Secrets never reach a store: a foreign producer (no SDK, so no redaction at the edge) writes
events full of secret shapes; after the worker and the sink ran, none of PostgreSQL, Qdrant
(history and patterns), the dataset, its refusals log, nor the downstream topics holds any.
Only ``telemetry.dlq`` and the input topic itself keep original bytes (documented).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from learnstream.postgres import connect
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import consume
from tests.integration.workers import Sink, WorkerProcess, wait_for
from tests.secrets_corpus import SECRETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
STEPS = (
    "Do it step by step:\n1. Read the setting from the environment.\n2. Pass it to the client."
    "\n```python\nclient = connect(os.environ['URL'])\n```\nThis keeps it out of the code."
)
DOWNSTREAM = ("interactions.scored", "patterns.candidates", "patterns.learned")


def _events() -> list[dict[str, Any]]:
    t0 = datetime(2017, 6, 1, tzinfo=UTC)
    out = []
    for n, (text, _, _) in enumerate(SECRETS):
        at = (t0 + timedelta(minutes=n)).isoformat()
        out.append(
            {
                "event_type": "completion",
                "event_id": f"sec{n}-{RUN}",
                "session_id": f"sec-{RUN}",
                "query": f"How do I configure the client for service {n} with {text}",
                "response": f"{STEPS}\nFor example: {text}",
                "success": True,
                "user_feedback": 1,
                "timestamp": at,
                "context": {"env": text, "lines": [text]},
            }
        )
    return out


def _leaks(text: str) -> list[str]:
    return [secret for _, secret, _ in SECRETS if secret in text]


def test_no_store_holds_a_secret(
    own_broker: BrokerUnderTest, postgres_url: str, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap_servers
    events = _events()
    ids = [e["event_id"] for e in events]
    producer = Producer({"bootstrap.servers": bootstrap})
    for e in events:
        producer.produce("telemetry.aidb", json.dumps(e).encode(), key=e["session_id"].encode())
    assert producer.flush(15) == 0

    data_dir = tmp_path / "worker"
    worker = WorkerProcess(bootstrap, data_dir, app_id=f"secrets-w-{RUN}")
    sink = Sink(bootstrap, postgres_url, f"secrets-s-{RUN}", tmp_path / "sink.log")
    dataset = data_dir / "dataset" / "dataset.jsonl"
    try:

        def rows() -> list[str]:
            import psycopg

            try:
                with connect(postgres_url) as conn:
                    got = conn.execute(
                        "SELECT t::text FROM telemetry_events t WHERE event_id = ANY(%s)", (ids,)
                    ).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
            return [r[0] for r in got]

        stored = wait_for(lambda: len(r := rows()) == len(ids) and r, 240, "every row")
        wait_for(lambda: dataset.exists() and RUN in dataset.read_text(), 120, "examples")
        time.sleep(5)  # the last batches of extraction
    finally:
        codes = (sink.stop(), worker.stop())
    assert codes == (0, 0), worker.log()[-3000:]

    assert all("[REDACTED:" in row for row in stored)
    assert [_leaks(row) for row in stored if _leaks(row)] == []

    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(data_dir / "qdrant"))
    try:
        for name in ("interaction-history", "skills-patterns"):
            points, _ = client.scroll(name, limit=10_000)
            ours = [json.dumps(p.payload) for p in points if RUN in json.dumps(p.payload)]
            assert ours, name
            assert [_leaks(p) for p in ours if _leaks(p)] == [], name
    finally:
        client.close()

    files = [dataset, dataset.with_name("dataset.refusals.jsonl")]
    lines = [x for f in files if f.exists() for x in f.read_text().splitlines() if RUN in x]
    assert any('"role":"assistant"' in x or '"role": "assistant"' in x for x in lines)
    assert [_leaks(x) for x in lines if _leaks(x)] == []

    records = consume(
        bootstrap, DOWNSTREAM, keep=lambda r: RUN.encode() in r.value, until=lambda k: False,
        timeout=10,
    )  # fmt: skip
    assert {r.topic for r in records} == set(DOWNSTREAM)
    leaked = [(r.topic, _leaks(r.value.decode())) for r in records if _leaks(r.value.decode())]
    assert leaked == []
