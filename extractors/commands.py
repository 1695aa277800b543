"""What ``learnstream patterns search|top`` do; the CLI only parses options."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from learnstream.settings import Settings
from schemas.pattern import Pattern

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from extractors.store import PatternStore


def _store(settings: Settings) -> tuple[QdrantClient, PatternStore]:
    from extractors.store import PatternStore
    from scorers.embeddings import Embedder
    from scorers.vectors import ensure_collections, qdrant_client

    embedder = Embedder(settings.embedding, None)
    embedder.load()
    client = qdrant_client(settings)
    ensure_collections(client, settings.embedding.dimensions)
    return client, PatternStore(client, embedder, merge_threshold=settings.extract.merge_threshold)


def _line(pattern: Pattern, score: float | None = None) -> str:
    head = f"{score:.3f}  " if score is not None else ""
    return (
        f"{head}{pattern.name}  [{', '.join(pattern.tags)}]  confidence {pattern.confidence:.2f}"
        f"  used {pattern.usage_count}  success {pattern.success_rate:.2f}  "
        f"({pattern.extractor}, id {pattern.pattern_id})\n    {pattern.description}"
    )


def search_patterns(settings: Settings, text: str, limit: int, echo: Callable[[str], None]) -> None:
    """Print the patterns most similar to ``text``."""
    client, store = _store(settings)
    try:
        hits = store.search(text, limit=limit)
        if not hits:
            echo("no patterns yet")
        for hit in hits:
            echo(_line(hit.pattern, hit.score))
    finally:
        client.close()


def top_patterns(settings: Settings, limit: int, echo: Callable[[str], None]) -> None:
    """Print the most used and trusted patterns."""
    client, store = _store(settings)
    try:
        found = store.top(limit=limit)
        if not found:
            echo("no patterns yet")
        for pattern in found:
            echo(_line(pattern))
    finally:
        client.close()
