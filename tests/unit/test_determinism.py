"""Same inputs, same scores: the real embedding model in any batch composition, the stage in any
batch size, and a replay over the same state, change no vector bit, factor or decision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import EmbeddingSettings, load_settings
from scorers.embeddings import Embedder
from scorers.stage import RawRecord, ScoringStage
from scorers.vectors import VectorLookups, ensure_collections, qdrant_client

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BASES = [
    "How do I paginate a PostgreSQL query with keyset pagination",
    "How do I give eth0 a static IP address on NixOS",
    "How do I cancel an asyncio task and wait for it to finish",
    "How do I write a multi-stage Dockerfile for a Go service",
]
VARIANTS = [
    "{q}?",
    "{q}",
    "{q} please?",
    "Question: {q}?",
    "{q} in production?",
    "{q}, step by step?",
    "Quick one: {q}?",
    "{q} without downtime?",
    "{q} (again)?",
    "I need to know: {q}?",
    "{q} on a large table or system?",
    "Can you explain {q}?",
]
ANSWER = (
    "Keep the last seen key and filter on it, ordered by the key, so no rows are skipped.\n"
    "```sql\nSELECT * FROM t WHERE id > $1 ORDER BY id LIMIT 50;\n```"
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    e = Embedder(EmbeddingSettings(cache_size=0), CollectorRegistry())
    e.load()
    yield e


def queries() -> list[str]:
    return [v.format(q=b) for v in VARIANTS for b in BASES]


def records() -> list[RawRecord]:
    """AIDB completions, most of them high value, timestamps a second apart."""
    out = []
    for n, query in enumerate(queries()):
        event = {
            "event_type": "completion",
            "event_id": f"d{n}",
            "session_id": f"s{n % 3}",
            "query": query,
            "response": ANSWER,
            "success": n % 7 != 3,
            "user_feedback": (1, 1, 0, -1)[n % 4],
            "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
        }
        value = json.dumps(event).encode()
        arrival = 1_700_000_000.0 + n * 0.3  # the Kafka timestamps
        out.append(RawRecord("telemetry.aidb", n % 6, n, b"k", value, arrival))
    return out


def test_a_text_gets_the_same_vector_in_any_batch(embedder: Embedder) -> None:
    texts = queries()
    together = embedder.encode(texts)
    alone = np.stack([embedder.encode([t])[0] for t in texts[:12]])
    backwards = embedder.encode(texts[::-1])[::-1]
    chunks = np.concatenate([embedder.encode(texts[i : i + 5]) for i in range(0, len(texts), 5)])
    mixed = embedder.encode([*texts[:9], "an unrelated text " * 40, *texts[9:]])
    mixed = np.delete(mixed, 9, axis=0)
    assert np.array_equal(together[:12], alone)
    assert np.array_equal(together, backwards)
    assert np.array_equal(together, chunks)
    assert np.array_equal(together, mixed)
    # The hard case for batched encoders: texts of one token length (no padding in the
    # batch) in batches of different sizes.
    assert embedder._model is not None
    tokenizer = embedder._model.tokenizer
    by_length: dict[int, list[str]] = {}
    for t in texts:
        by_length.setdefault(len(tokenizer(t)["input_ids"]), []).append(t)
    same = max(by_length.values(), key=len)
    assert len(same) >= 4
    full = embedder.encode(same)
    assert np.array_equal(full[:1], embedder.encode(same[:1]))
    assert np.array_equal(full[:3], embedder.encode(same[:3]))
    # Long texts are truncated like the model truncates them.
    long = embedder.encode(["word " * 400, *texts[:3]])
    assert np.array_equal(long[0], embedder.encode(["word " * 400])[0])
    # Still the model's embedding: within float noise of its own batched encode.
    reference = embedder._model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    assert np.abs(together - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)


def score_all(tmp: Path, embedder: Embedder, batch: int, recs: list[RawRecord]) -> list[Any]:
    settings = load_settings(data_dir=tmp)
    client = qdrant_client(settings)
    try:
        ensure_collections(client, settings.embedding.dimensions)
        stage = ScoringStage(
            settings, embedder, VectorLookups(client), StreamMetrics.on(CollectorRegistry())
        )
        out = []
        for i in range(0, len(recs), batch):
            out += stage.process(recs[i : i + batch]).scored
        return [s.model_dump(exclude={"scored_at"}) for s in out]
    finally:
        client.close()


def test_batch_size_and_replays_alter_no_factor(tmp_path: Path, embedder: Embedder) -> None:
    recs = records()
    by_size = {n: score_all(tmp_path / f"b{n}", embedder, n, recs) for n in (1, 5, 48)}
    assert by_size[1] == by_size[5] == by_size[48]
    scored = by_size[48]
    novelty = [s["factors"]["novelty"] for s in scored]
    reuse = [s["inputs"]["reusability"]["similar_earlier"] for s in scored]
    # Not vacuous: some events are novel, some repeat known knowledge, reuse varies.
    assert 1.0 in novelty and any(0 < v < 0.1 for v in novelty)
    assert len(set(reuse)) >= 3
    assert 0 < sum(s["high_value"] for s in scored) < len(scored)
    # A replay over the same state (the history holds every event) scores the same.
    again = score_all(tmp_path / "b5", embedder, 7, recs)
    assert again == scored
