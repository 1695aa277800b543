"""What the agents of one worker process share: `StreamContext`, built by `build_context`.

Apart from `streams.app` (which builds the Faust app and registers the agents) so that the
agents import it without importing the app: no app <-> agents cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry

from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import Settings
from schemas.interaction import ScoredInteraction
from scorers.stage import ScoringStage

if TYPE_CHECKING:
    from extractors.stage import ExtractionStage
    from extractors.store import FeedbackResult, PatternStore

log = logging.getLogger("learnstream.worker")


@dataclass
class StreamContext:
    """What the agents share in one worker process.

    ``patterns`` is the pattern store that pattern feedback (``patterns_used`` of scored
    interactions) is applied to; it is there whether or not this worker runs the extract agent
    (``extraction``), since feedback comes with the telemetry partitions the score agent owns.
    ``client`` is the Qdrant client every stage shares (closed by `close`).
    """

    settings: Settings
    registry: CollectorRegistry
    metrics: StreamMetrics
    stage: ScoringStage
    executor: ThreadPoolExecutor
    extraction: ExtractionStage | None = None
    extract_executor: ThreadPoolExecutor | None = None
    patterns: PatternStore | None = None
    client: Any = None
    closed: bool = False

    def apply_feedback(self, scored: Sequence[ScoredInteraction]) -> list[FeedbackResult]:
        """Apply the pattern feedback ``scored`` carries (idempotent per event and pattern)."""
        if self.patterns is None:
            return []
        from extractors.feedback import signals_from

        signals = [signal for s in scored for signal in signals_from(s)]
        if not signals:
            return []
        with self.stage.vector_lock:
            return [self.patterns.apply_feedback(signal) for signal in signals]

    def close(self) -> None:
        """Shut the thread pools down (after their running batch), close the extraction stage
        (its pool, LLM client and dataset file) and the Qdrant client. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.executor.shutdown(wait=True)
        if self.extract_executor is not None:
            self.extract_executor.shutdown(wait=True)
        if self.extraction is not None:
            self.extraction.close()
        if self.client is not None:
            with self.stage.vector_lock:
                self.client.close()
        log.info("worker: closed the thread pools, the extraction stage and Qdrant")


def build_context(settings: Settings, registry: CollectorRegistry | None = None) -> StreamContext:
    """Load the model, open Qdrant, create the collections."""
    from extractors.metrics import ExtractMetrics
    from extractors.store import PatternStore
    from scorers.embeddings import Embedder
    from scorers.vectors import VectorLookups, ensure_collections, qdrant_client

    registry = registry or REGISTRY
    metrics = StreamMetrics.on(registry)
    embedder = Embedder(settings.embedding, registry)
    embedder.load()
    client = qdrant_client(settings)
    ensure_collections(client, settings.embedding.dimensions)
    lookups = VectorLookups(client)
    stage = ScoringStage(settings, embedder, lookups, metrics)
    # One thread per stage: each stage handles one batch at a time, in order; stages share
    # the Qdrant client under one lock.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
    ctx = StreamContext(settings, registry, metrics, stage, executor, client=client)
    if settings.worker.extract:
        from extractors.stage import ExtractionStage

        ctx.extraction = ExtractionStage.create(
            settings,
            embedder,
            client,
            registry,
            vector_lock=stage.vector_lock,
            pattern_index=lookups.patterns,
        )
        ctx.extract_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract")
        ctx.patterns = ctx.extraction.store
    else:
        ctx.patterns = PatternStore(
            client,
            embedder,
            merge_threshold=settings.extract.merge_threshold,
            metrics=ExtractMetrics.on(registry),
            index=lookups.patterns,
        )
    return ctx
