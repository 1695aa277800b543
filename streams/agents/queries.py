"""Read-only pages on the worker's web server for what the worker holds (its Qdrant store).

Local Qdrant admits one process, so while a worker runs, ``learnstream patterns search|top``
ask it here instead of opening the store (and loading the embedding model) themselves:

- ``GET /api/v1/patterns/search?q=TEXT&limit=N``: the patterns nearest to TEXT (cosine),
  ``{"store": ..., "query": ..., "patterns": [{"score": ..., "pattern": {...}}, ...]}``;
- ``GET /api/v1/patterns/top?limit=N``: served by the `triggers` module; here only when this
  worker runs without it.

``store`` names the store (`extractors.commands.store_identity`), so a CLI with another data
directory does not take this worker's answer for its own. Queries take the shared vector lock
only around the Qdrant call; the query is embedded outside it.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from extractors.commands import store_identity

if TYPE_CHECKING:
    import faust

    from extractors.store import PatternStore
    from streams.context import StreamContext

MAX_LIMIT = 100


def _limit(request: Any, default: int, ceiling: int = MAX_LIMIT) -> int | None:
    try:
        value = int(request.query.get("limit", default))
    except ValueError:
        return None
    return max(1, min(ceiling, value))


def pattern_store(ctx: StreamContext) -> PatternStore:
    """The extract agent's store, or one over the scoring stage's client and model."""
    if ctx.extraction is not None:
        return ctx.extraction.store
    from extractors.store import PatternStore

    return PatternStore(ctx.stage.vectors.client, ctx.stage.embedder)


def register(app: faust.App, ctx: StreamContext) -> None:
    """Attach the query pages to ``app``'s web server."""
    identity = store_identity(ctx.settings)
    store = pattern_store(ctx)
    lock = ctx.stage.vector_lock  # shared by every stage of the process

    @app.page("/api/v1/patterns/search")
    async def search(web: Any, request: Any) -> Any:
        text = str(request.query.get("q") or "").strip()
        limit = _limit(request, 5)
        if not text or limit is None:
            return web.json(
                {"error": "give ?q=TEXT (non-empty) and optionally &limit=N (1-100)"}, status=400
            )

        def nearest() -> list[Any]:
            vector = store.embedder.encode([text])[0]
            with lock:
                return store.nearest(vector, limit)

        hits = await asyncio.get_running_loop().run_in_executor(None, nearest)
        return web.json(
            {
                "store": identity,
                "query": text,
                "patterns": [
                    {"score": h.score, "pattern": json.loads(h.pattern.model_dump_json())}
                    for h in hits
                ],
            }
        )

    if ctx.settings.worker.triggers:  # the triggers module serves /api/v1/patterns/top
        return

    @app.page("/api/v1/patterns/top")
    async def top(web: Any, request: Any) -> Any:
        limit = _limit(request, 10, ceiling=1000)
        if limit is None:
            return web.json({"error": "limit must be a number"}, status=400)

        def best() -> list[Any]:
            with lock:
                return store.top(limit=limit)

        found = await asyncio.get_running_loop().run_in_executor(None, best)
        return web.json(
            {"store": identity, "patterns": [json.loads(p.model_dump_json()) for p in found]}
        )
