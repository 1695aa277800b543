"""The extraction stage with Qdrant local mode, the real embedding model and a real HTTP LLM."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from qdrant_client import QdrantClient

from extractors.dataset import stats, validate
from extractors.fakellm import FakeChatServer
from extractors.heuristic import heuristic_pattern
from extractors.stage import ExtractionStage, dataset_path
from extractors.store import PatternStore, feedback_marker, pattern_point_id
from learnstream.core.settings import EmbeddingSettings, Settings, load_settings
from schemas.interaction import Outcome
from schemas.pattern import Pattern
from scorers.embeddings import Embedder
from scorers.vectors import PATTERNS, HistoryPoint, VectorLookups
from tests.unit.test_extract_support import RESPONSE, T0, candidate

pytestmark = pytest.mark.integration

QUERIES = [
    "How do I set a static IP address in NixOS?",
    "How do I delete duplicate rows in Postgres but keep the oldest?",
    "How do I fix Rust error E0502 cannot borrow as mutable?",
    "How do I write a multi-stage Dockerfile for a FastAPI app?",
    "How do I make a Kafka consumer commit offsets after the database insert?",
    "How do I narrow an unknown WebSocket message in TypeScript?",
    "How do I configure a Terraform S3 backend with locking?",
    "How do I match an ISO date with a regular expression?",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder(EmbeddingSettings(), CollectorRegistry())
    e.load()
    return e


@pytest.fixture
def client(tmp_path: Path) -> Iterator[QdrantClient]:
    c = QdrantClient(path=str(tmp_path / "qdrant"))
    yield c
    c.close()


def make_settings(tmp_path: Path, **extract: Any) -> Settings:
    return load_settings(data_dir=tmp_path / "data", extract=extract)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_stage(
    tmp_path: Path,
    embedder: Embedder,
    client: QdrantClient,
    registry: CollectorRegistry,
    **extract: Any,
) -> ExtractionStage:
    return ExtractionStage.create(make_settings(tmp_path, **extract), embedder, client, registry)


def unit(*coords: float, dim: int = 384) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(coords)] = coords
    return v


def pattern(pid: str, event_id: str, **kw: Any) -> Pattern:
    base = {
        "pattern_id": pid,
        "name": f"Pattern {pid}",
        "description": "Does a thing.",
        "source_event_ids": [event_id],
        "created_at": T0,
        "updated_at": T0,
    }
    return Pattern.model_validate(base | kw)


def all_payloads(client: QdrantClient) -> dict[str, dict[str, Any]]:
    points, _ = client.scroll(PATTERNS, limit=1000, with_payload=True)
    return {str(p.id): dict(p.payload or {}) for p in points}


def test_store_merges_at_the_threshold_and_keeps_created_ts(
    client: QdrantClient, embedder: Embedder
) -> None:
    store = PatternStore(client, embedder, merge_threshold=0.95)
    store.ensure()
    s = math.sqrt(1 - 0.95**2)
    a = unit(1.0)
    below = unit(0.9499, math.sqrt(1 - 0.9499**2))
    at = unit(0.95, -s)

    r1 = store.upsert(pattern("a", "e1", tags=["x"]), a)
    assert r1.status == "new"
    r2 = store.upsert(pattern("b", "e2"), below)
    assert r2.status == "new"
    r3 = store.upsert(pattern("c", "e3", tags=["y"], created_at=T0 + timedelta(hours=1)), at)
    assert r3.status == "merged"
    assert r3.similarity is not None and r3.similarity == pytest.approx(0.95, abs=1e-6)
    assert r3.pattern.pattern_id == "a"
    assert r3.pattern.source_event_ids == ["e1", "e3"]
    assert r3.pattern.tags == ["x", "y"]
    assert store.count() == 2

    [point] = client.retrieve(PATTERNS, ids=[pattern_point_id("a")], with_payload=True)
    payload = point.payload or {}
    assert payload["created_ts"] == T0.timestamp()
    assert payload["source_event_ids"] == ["e1", "e3"]
    assert (
        Pattern.model_validate(payload["pattern"] | {"source_event_ids": ["e1", "e3"]})
        == r3.pattern
    )
    assert store.get("a") == r3.pattern
    assert store.get("nope") is None

    before = all_payloads(client)
    r4 = store.upsert(pattern("zzz", "e3", name="Different"), unit(0.0, 0.0, 1.0))
    assert r4.status == "duplicate" and r4.pattern == r3.pattern
    assert all_payloads(client) == before
    assert store.find_by_events(["e1", "e2", "e9"]).keys() == {"e1", "e2"}


def test_novelty_does_not_depend_on_what_extraction_stored(
    client: QdrantClient, embedder: Embedder
) -> None:
    """Novelty reads earlier high-value interactions in the scorer's own history, whose
    completeness the scorer controls (docs/replay-determinism.md), not the extracted patterns,
    which lag behind by the LLM's latency: a stored pattern changes no look-up."""
    store = PatternStore(client, embedder)
    store.ensure()
    store.upsert(pattern("a", "e1"), unit(1.0))
    lookups = VectorLookups(client).lookup(
        [
            HistoryPoint("later", T0 + timedelta(seconds=1), unit(1.0), "aidb", "q"),
            HistoryPoint("earlier", T0 - timedelta(seconds=1), unit(1.0), "aidb", "q"),
        ]
    )
    assert [lk.max_known_similarity for lk in lookups] == [None, None]


def test_near_duplicates_merge_end_to_end(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    stage = make_stage(tmp_path, embedder, client, registry)
    batch = [
        candidate("e1", "How do I write a pytest fixture for a Kafka consumer?"),
        candidate(
            "e2", "How can I write a pytest fixture for a Kafka Consumer in Python?", minutes=1
        ),
        candidate("e3", "How do I set a static IP address in NixOS?", minutes=2),
    ]
    results = stage.process(batch)
    stage.close()
    assert [r.status for r in results] == ["new", "merged", "new"]
    assert [r.event_id for r in results] == ["e1", "e2", "e3"]
    merged = results[1]
    assert merged.similarity is not None and 0.95 <= merged.similarity < 1.0
    assert merged.learned.pattern.pattern_id == results[0].learned.pattern.pattern_id
    assert merged.learned.pattern.source_event_ids == ["e1", "e2"]
    assert merged.learned.status == "merged" and merged.emit
    assert stage.store.count() == 2
    assert all(r.dataset_written for r in results)
    assert stats(dataset_path(stage.settings)).lines == 3
    assert (
        registry.get_sample_value("learnstream_patterns_merged_total", {"extractor": "heuristic"})
        == 1
    )
    hits = stage.store.search("static IP NixOS", limit=2)
    assert hits[0].pattern.source_event_ids == ["e3"]
    assert hits[0].score > hits[1].score


def test_redelivery_changes_nothing(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    stage = make_stage(tmp_path, embedder, client, registry)
    batch = [candidate(f"e{n}", q, minutes=n) for n, q in enumerate(QUERIES[:4])]
    first = stage.process(batch)
    assert [r.status for r in first] == ["new"] * 4
    path = dataset_path(stage.settings)
    payloads, data = all_payloads(client), path.read_bytes()

    again = stage.process([*batch[2:], batch[0], batch[0]])
    assert [r.status for r in again] == ["duplicate"] * 4
    assert not any(r.emit or r.dataset_written for r in again)
    assert [r.learned.pattern.pattern_id for r in again] == [
        first[2].learned.pattern.pattern_id,
        first[3].learned.pattern.pattern_id,
        first[0].learned.pattern.pattern_id,
        first[0].learned.pattern.pattern_id,
    ]
    assert all_payloads(client) == payloads
    assert path.read_bytes() == data
    # within one batch, a repeated event is a duplicate of its first copy
    fresh = candidate("e-new", QUERIES[5])
    assert [r.status for r in stage.process([fresh, fresh])] == ["new", "duplicate"]
    stage.close()


def test_crash_between_store_and_dataset_is_completed_on_redelivery(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    stage = make_stage(tmp_path, embedder, client, registry)
    c = candidate("e1")
    stage.store.upsert(heuristic_pattern(c))  # stored, then the worker died
    [r] = stage.process([c])
    assert r.status == "duplicate" and r.dataset_written
    assert stats(dataset_path(stage.settings)).lines == 1
    stage.close()


def test_pattern_feedback_is_applied_once_per_event(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    stage = make_stage(tmp_path, embedder, client, registry)
    [learned] = stage.process([candidate("e1")])
    pid = learned.learned.pattern.pattern_id
    used = candidate("u1", QUERIES[0], patterns_used=[pid, "pat-unknown"], score=0.9, minutes=5)
    effects = [r.effect for r in stage.apply_feedback([used])]
    assert effects == ["up", "unknown"]
    assert [r.effect for r in stage.apply_feedback([used])] == ["duplicate", "unknown"]
    failed = candidate(
        "u2", QUERIES[1], patterns_used=[pid], outcome=Outcome.FAILURE, score=0.3, minutes=9
    )
    lifecycle = candidate("u3", patterns_used=[pid], score=None)
    assert [r.effect for r in stage.apply_feedback([failed, lifecycle])] == ["down"]
    p = stage.store.get(pid)
    assert p is not None
    assert (p.confidence, p.usage_count, p.success_rate) == (0.49, 2, 0.5)
    assert p.updated_at == T0 + timedelta(minutes=9)
    [point] = client.retrieve(PATTERNS, ids=[pattern_point_id(pid)], with_payload=True)
    assert (point.payload or {})["feedback_applied"] == [
        feedback_marker("u1"),
        feedback_marker("u2"),
    ]
    # a later merge keeps the applied ids, so feedback stays idempotent
    stage.process(
        [candidate("e2", "How can I write a pytest fixture for a Kafka Consumer in Python?")]
    )
    assert [r.effect for r in stage.apply_feedback([used])] == ["duplicate", "unknown"]
    top = stage.store.top(1)
    assert top[0].pattern_id == pid
    assert registry.get_sample_value("learnstream_pattern_feedback_total", {"effect": "up"}) == 1
    stage.close()


def distinct_topic(request: dict[str, Any]) -> str:
    text = request["messages"][-1]["content"]
    query = text.split("## Request", 1)[1].strip().splitlines()[0]
    return json.dumps(
        {
            "name": query.removeprefix("How do I ").rstrip("?"),
            "description": f"Steps and code that answer: {query}",
            "steps": ["Understand the problem", "Apply the change"],
            "tags": ["test"],
        }
    )


def test_llm_stage_runs_in_parallel_and_keeps_input_order(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    with FakeChatServer(delay_s=0.3, responder=distinct_topic) as llm:
        stage = make_stage(
            tmp_path, embedder, client, registry, llm_base_url=llm.url, concurrency=4
        )
        batch = [candidate(f"e{n}", q, minutes=n) for n, q in enumerate(QUERIES)]
        batch[3] = candidate("e3", QUERIES[3] + " My key is sk-abcdefghijklmnopqrstuvwx", minutes=3)
        started = time.monotonic()
        results = stage.process(batch)
        elapsed = time.monotonic() - started
        stage.close()
    assert llm.max_in_flight >= 2, elapsed  # calls overlapped (4 workers), not one by one
    assert [r.event_id for r in results] == [f"e{n}" for n in range(8)]
    assert [r.status for r in results] == ["new"] * 8
    assert {r.extractor for r in results} == {"llm"}
    p = results[0].learned.pattern
    assert p.name == "set a static IP address in NixOS"
    assert (p.extractor, p.prompt_version, p.extractor_model) == ("llm", "v1", "local")
    assert p.example is not None and p.example.startswith("```python")  # from the response
    assert len(llm.requests) == 8
    assert not any("sk-abcdefghijklmnopqrstuvwx" in json.dumps(r.body) for r in llm.requests)
    lines = [json.loads(x) for x in dataset_path(stage.settings).read_text().splitlines()]
    assert "sk-abcdefghijklmnopqrstuvwx" not in json.dumps(lines)
    assert "[REDACTED:api_key]" in lines[3]["messages"][1]["content"]
    assert lines[0]["metadata"]["extractor"] == "llm"
    assert (
        registry.get_sample_value("learnstream_patterns_extracted_total", {"extractor": "llm"}) == 8
    )


def test_llm_down_falls_back_and_loses_nothing(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stage = make_stage(
        tmp_path,
        embedder,
        client,
        registry,
        llm_base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        breaker_failure_threshold=2,
    )
    batch = [candidate(f"e{n}", q, minutes=n) for n, q in enumerate(QUERIES)]
    results = stage.process(batch)
    stage.close()
    assert [r.event_id for r in results] == [f"e{n}" for n in range(8)]
    assert {r.extractor for r in results} == {"heuristic"}
    assert all(r.llm_error in ("transport", "circuit_open") for r in results)
    assert stage.store.count() == 8
    assert stats(dataset_path(stage.settings)).lines == 8
    assert registry.get_sample_value("learnstream_extract_llm_circuit_state") == 2


@pytest.mark.slow
def test_stage_dataset_is_a_conversational_sft_dataset(
    tmp_path: Path, embedder: Embedder, client: QdrantClient, registry: CollectorRegistry
) -> None:
    import datasets
    from trl.data_utils import is_conversational

    stage = make_stage(tmp_path, embedder, client, registry)
    stage.process([candidate(f"e{n}", q, minutes=n) for n, q in enumerate(QUERIES)])
    stage.close()
    path = dataset_path(stage.settings)
    assert validate(path).ok
    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(ds) == 8
    assert all(is_conversational({"messages": row["messages"]}) for row in ds)
    assert ds[0]["messages"][2]["content"] == RESPONSE.strip()
