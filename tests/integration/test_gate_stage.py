"""The substance gate and the dataset balance inside the extraction stage (real embedding model,
Qdrant local mode)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from qdrant_client import QdrantClient

from extractors.dataset import stats
from extractors.stage import ExtractionStage, dataset_path, refusals_path
from learnstream.core.settings import EmbeddingSettings, load_settings
from scorers.embeddings import Embedder
from tests.unit.test_extract_support import RESPONSE, candidate

pytestmark = pytest.mark.integration

SQUASH = (
    "Use an interactive rebase over the last commits and mark all but the first as squash."
    "\n\n```bash\ngit rebase -i HEAD~3\ngit push --force-with-lease\n```"
)


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


def test_filler_is_refused_logged_and_counted_once(
    tmp_path: Path, embedder: Embedder, client: QdrantClient
) -> None:
    registry = CollectorRegistry()
    settings = load_settings(data_dir=tmp_path / "data")
    stage = ExtractionStage.create(settings, embedder, client, registry)
    batch = [
        candidate("good", minutes=0),
        candidate("joke", "tell me a joke", "I can help with that.", minutes=1),
        candidate("rep", "hi", "I can help with that. I can help with that.", minutes=2),
        candidate("echo", "How do I rebase?", "How do I rebase?", minutes=3),
    ]
    results = stage.process(batch)
    assert [r.status for r in results] == ["new", "refused", "refused", "refused"]
    assert [r.refusal.reason if r.refusal else None for r in results] == [
        None,
        "acknowledgement",
        "repetition",
        "echo",
    ]
    assert not any(r.emit for r in results[1:])
    assert results[1].refused and results[1].extractor == "rules"
    with pytest.raises(ValueError, match="made no pattern"):
        _ = results[1].learned
    assert stage.store.count() == 1
    assert stats(dataset_path(settings)).lines == 1

    lines = [json.loads(x) for x in refusals_path(settings).read_text().splitlines()]
    assert [(x["event_id"], x["kind"], x["reason"]) for x in lines] == [
        ("joke", "pattern", "acknowledgement"),
        ("rep", "pattern", "repetition"),
        ("echo", "pattern", "echo"),
    ]
    assert lines[0]["query_excerpt"] == "tell me a joke"
    labels = {"reason": "acknowledgement", "decided_by": "rules"}
    assert registry.get_sample_value("learnstream_candidates_refused_total", labels) == 1
    assert registry.get_sample_value("learnstream_gate_passed_total", {"basis": "code"}) == 1

    # A redelivery (and a repeat within the batch) changes nothing and counts nothing.
    again = stage.process([batch[1], batch[1], batch[0]])
    assert [r.status for r in again] == ["refused", "refused", "duplicate"]
    assert len(refusals_path(settings).read_text().splitlines()) == 3
    assert registry.get_sample_value("learnstream_candidates_refused_total", labels) == 1
    data = stats(dataset_path(settings)).to_dict()
    assert data["refusals"]["refused"] == 3
    assert data["refusals"]["refused_by_reason"] == {
        "acknowledgement": 1,
        "repetition": 1,
        "echo": 1,
    }
    stage.close()


def test_paraphrases_with_the_same_answer_are_balanced(
    tmp_path: Path, embedder: Embedder, client: QdrantClient
) -> None:
    registry = CollectorRegistry()
    settings = load_settings(data_dir=tmp_path / "data")
    stage = ExtractionStage.create(settings, embedder, client, registry)
    questions = [
        "How do I squash my last three commits?",
        "Squash the last few git commits into one",
        "combine recent commits into a single commit with git",
        "What's the way to squash commits before pushing?",
    ]
    batch = [
        candidate(f"s{n}", q, SQUASH, minutes=n, score=0.7 + n / 100)
        for n, q in enumerate(questions)
    ]
    # the same long answer to unrelated questions is not a duplicate (canned responses)
    batch += [
        candidate("o1", "How do I set a static IP address in NixOS?", RESPONSE, minutes=9),
        candidate("o2", "How do I fix Rust error E0502?", RESPONSE, minutes=10),
    ]
    results = stage.process(batch)
    assert all(r.status in ("new", "merged") for r in results)  # every pattern is learned
    written = {r.event_id for r in results if r.dataset_written}
    skipped = [r for r in results if r.refusal is not None]
    # the two best-scored paraphrases are kept
    assert written == {"s2", "s3", "o1", "o2"}, [r.refusal for r in skipped]
    assert {r.event_id for r in skipped} == {"s0", "s1"}
    assert {r.refusal.reason for r in skipped if r.refusal} == {"near_duplicate"}
    assert (
        registry.get_sample_value(
            "learnstream_dataset_examples_skipped_total", {"reason": "near_duplicate"}
        )
        == 2
    )
    data = stats(dataset_path(settings)).to_dict()
    assert data["lines"] == 4
    assert data["refusals"]["skipped_by_reason"] == {"near_duplicate": 2}
    stage.close()

    # A restarted stage rebuilds the balance from the dataset.
    other = QdrantClient(path=str(tmp_path / "qdrant2"))
    restarted = ExtractionStage.create(settings, embedder, other, CollectorRegistry())
    [late] = restarted.process(
        [candidate("s9", "git: squash several commits into one", SQUASH, minutes=20)]
    )
    restarted.close()
    other.close()
    assert not late.dataset_written
    assert late.refusal is not None and late.refusal.reason == "near_duplicate"

    # Each event's decision is made once: a replay, in other batches and even with room for
    # more near-duplicates now, skips the same events for the same reasons.
    before = dataset_path(settings).read_bytes()
    roomy = load_settings(data_dir=tmp_path / "data", extract={"max_near_duplicates": 50})
    third = QdrantClient(path=str(tmp_path / "qdrant3"))
    replayed = ExtractionStage.create(roomy, embedder, third, CollectorRegistry())
    again = [r for c in reversed(batch) for r in replayed.process([c])]
    replayed.close()
    third.close()
    assert dataset_path(settings).read_bytes() == before
    assert {r.event_id: r.refusal.reason for r in again if r.refusal} == {
        "s0": "near_duplicate",
        "s1": "near_duplicate",
    }
