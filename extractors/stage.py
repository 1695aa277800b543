"""The extraction stage as blocking functions over batches; the Faust agent moves data in and out.

`ExtractionStage.process` takes a batch of candidates (``patterns.candidates``):

1. candidates whose event is already folded into a stored pattern (a redelivery) skip extraction;
2. the others are redacted, passed through the substance gate and extracted in parallel
   (``concurrency`` worker threads; LLM calls dominate), heuristic fallback on any LLM failure;
   a candidate without reusable content is refused (status ``refused``: no pattern, no
   example) and logged with its reason in the refusals JSONL next to the dataset;
3. the accepted patterns' name + description are embedded in one batch;
4. in input order: pattern store upsert (new / merged / duplicate); then the dataset balance
   (`extractors.balance`: near-duplicates, per-pattern cap; best-scored first) decides which
   examples are appended (one fsync per batch); the skipped ones are logged too.

Results come back in input order. Re-processing a batch changes nothing: the store recognizes
its events, the dataset skips its examples by content hash (a redelivery after a crash
between the two still writes the missing example), the gate refuses the same candidates again
and the refusals log records each event once.

`ExtractionStage.apply_feedback` takes any scored interactions (``interactions.scored``) and
applies the feedback of those listing ``patterns_used``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from prometheus_client import CollectorRegistry

from extractors.balance import Admission, DatasetBalance, Proposal
from extractors.dataset import DatasetWriter, build_example, content_hash
from extractors.extract import Extraction, Extractor
from extractors.feedback import signals_from
from extractors.metrics import ExtractMetrics
from extractors.patterns import PatternStatus, pattern_text
from extractors.refusals import RefusalLog, refusal_of, refusals_path_for
from extractors.store import FeedbackResult, PatternStore
from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import Settings
from schemas.interaction import ScoredInteraction
from schemas.pattern import DatasetExample, LearnedPattern, Pattern, Refusal

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from scorers.embeddings import Embedder
    from scorers.vectors import HistoryIndex

log = logging.getLogger("learnstream.extract.stage")


def dataset_path(settings: Settings) -> Path:
    """The dataset file: ``LEARNSTREAM_EXTRACT__DATASET_PATH`` or ``<data dir>/dataset/...``."""
    return settings.extract.dataset_path or settings.dataset_path


def refusals_path(settings: Settings) -> Path:
    """The refusals log: ``<dataset stem>.refusals.jsonl`` next to the dataset."""
    return refusals_path_for(dataset_path(settings))


ResultStatus = PatternStatus | Literal["refused"]


@dataclass(frozen=True)
class ExtractionResult:
    """One candidate's outcome.

    ``status``: ``new`` / ``merged`` (publish ``learned`` to ``patterns.learned``),
    ``duplicate`` (the event was already learned: publish nothing) or ``refused`` (the
    substance gate refused it: no pattern, no example, publish nothing; ``refusal`` says why and
    ``learned`` raises). ``learned.pattern`` is the stored pattern (after a merge, the one it
    was merged into). ``dataset_written`` is False for a duplicate example, a candidate without
    a query or response, or an example the balance skipped (then ``refusal`` has kind
    ``example`` and the reason).
    """

    event_id: str
    status: ResultStatus
    learned_pattern: LearnedPattern | None
    dataset_written: bool
    extractor: str
    llm_error: str | None = None
    similarity: float | None = None
    refusal: Refusal | None = None

    @property
    def learned(self) -> LearnedPattern:
        """The learned (or recognized) pattern; ValueError for a refused candidate."""
        if self.learned_pattern is None:
            reason = self.refusal.reason if self.refusal is not None else "refused"
            raise ValueError(f"candidate {self.event_id} made no pattern ({reason})")
        return self.learned_pattern

    @property
    def refused(self) -> bool:
        """Whether the substance gate refused the candidate."""
        return self.status == "refused"

    @property
    def emit(self) -> bool:
        """Whether to publish ``learned`` to ``patterns.learned``."""
        return self.status in ("new", "merged")


class ExtractionStage:
    """Holds the extractor, pattern store and dataset writer; `process` is the agent's call."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder,
        store: PatternStore,
        dataset: DatasetWriter,
        extractor: Extractor,
        metrics: ExtractMetrics,
        stream_metrics: StreamMetrics | None = None,
        vector_lock: threading.Lock | None = None,
        refusals: RefusalLog | None = None,
        balance: DatasetBalance | None = None,
    ) -> None:
        self.settings = settings
        # Held around every use of the Qdrant client; share it with other stages of the process
        # (Qdrant local mode is not safe for concurrent use from several threads).
        self.vector_lock = vector_lock or threading.Lock()
        self.embedder = embedder
        self.store = store
        self.dataset = dataset
        self.extractor = extractor
        self.metrics = metrics
        self.stream_metrics = stream_metrics
        self.refusals = refusals or RefusalLog(refusals_path_for(dataset.path))
        if balance is None:
            conf = settings.extract
            balance = DatasetBalance(
                max_per_pattern=conf.max_examples_per_pattern,
                max_near_duplicates=conf.max_near_duplicates,
                answer_similarity=conf.near_duplicate_answer_similarity,
                query_similarity=conf.near_duplicate_query_similarity,
                encode=embedder.encode,
            )
            balance.load(dataset.path)
        self.balance = balance
        self._pool = ThreadPoolExecutor(
            max_workers=settings.extract.concurrency, thread_name_prefix="extract"
        )

    @classmethod
    def create(
        cls,
        settings: Settings,
        embedder: Embedder,
        client: QdrantClient,
        registry: CollectorRegistry | None = None,
        *,
        vector_lock: threading.Lock | None = None,
        pattern_index: HistoryIndex | None = None,
    ) -> ExtractionStage:
        """The stage wired from settings: store (collections ensured), open dataset, extractor.

        ``pattern_index`` is the scoring stage's in-memory copy of the patterns (Qdrant local
        mode), which the store keeps current.
        """
        metrics = ExtractMetrics.on(registry)
        store = PatternStore(
            client,
            embedder,
            merge_threshold=settings.extract.merge_threshold,
            metrics=metrics,
            index=pattern_index,
        )
        store.ensure()
        dataset = DatasetWriter(dataset_path(settings), metrics)
        dataset.open()
        return cls(
            settings,
            embedder=embedder,
            store=store,
            dataset=dataset,
            extractor=Extractor(settings.extract, metrics),
            metrics=metrics,
            stream_metrics=StreamMetrics.on(registry),
            vector_lock=vector_lock,
        )

    def close(self) -> None:
        """Stop the worker threads, close the LLM client and the dataset file."""
        self._pool.shutdown(wait=True)
        self.extractor.close()
        self.dataset.close()

    def _timed(self, step: str, started: float) -> float:
        now = time.perf_counter()
        if self.stream_metrics is not None:
            self.stream_metrics.stage_seconds.labels("extract", step).observe(now - started)
        return now

    def _learned(self, pattern: Pattern, status: PatternStatus, event_id: str) -> LearnedPattern:
        return LearnedPattern(
            pattern=pattern,
            status="new" if status == "new" else "merged",
            event_id=event_id,
            base_model=self.settings.base_model,
            learned_at=pattern.updated_at,
        )

    def process(self, candidates: Sequence[ScoredInteraction]) -> list[ExtractionResult]:
        """Extract, store and write examples for a batch; one result per candidate, in order."""
        if not candidates:
            return []
        t = time.perf_counter()
        with self.vector_lock:
            known = self.store.find_by_events([c.event_id for c in candidates])
        first_index: dict[str, int] = {}
        todo: list[int] = []
        for n, c in enumerate(candidates):
            if c.event_id not in known and c.event_id not in first_index:
                first_index[c.event_id] = n
                todo.append(n)
        t = self._timed("lookup", t)

        extracted: dict[int, Extraction] = dict(
            zip(
                todo,
                self._pool.map(self.extractor.extract, [candidates[n] for n in todo]),
                strict=True,
            )
        )
        accepted = [n for n in todo if extracted[n].pattern is not None]
        t = self._timed("extract", t)
        patterns = [extracted[n].pattern for n in accepted]
        vectors: Any = (
            self.embedder.encode([pattern_text(p) for p in patterns if p is not None])
            if accepted
            else []
        )
        vector_of = dict(zip(accepted, vectors, strict=True))
        t = self._timed("embed", t)

        results: list[ExtractionResult | None] = [None] * len(candidates)
        examples: list[tuple[int, DatasetExample]] = []
        redacted: dict[int, ScoredInteraction] = {}
        system = self.settings.extract.system_prompt
        with self.vector_lock:
            self._store_all(
                candidates=candidates,
                extracted=extracted,
                vector_of=vector_of,
                known=known,
                results=results,
                examples=examples,
                redacted_of=redacted,
                system=system,
            )
        t = self._timed("store", t)

        examples = self._balance(examples, results, redacted)
        written = self.dataset.append([e for _, e in examples]) if examples else []
        for (n, _), ok in zip(examples, written, strict=True):
            r = results[n]
            if ok and r is not None:
                results[n] = replace(r, dataset_written=True)
        self._log_refusals(results)
        self._timed("dataset", t)
        return [r for r in results if r is not None]

    def _balance(
        self,
        examples: list[tuple[int, DatasetExample]],
        results: list[ExtractionResult | None],
        redacted_of: dict[int, ScoredInteraction],
    ) -> list[tuple[int, DatasetExample]]:
        """The examples the balance admits (exact duplicates pass: the writer skips them).

        A decision is made once per event: an example skipped before (a redelivery, a replay)
        is skipped again with the same reason, whatever batch it arrives in now, so a replay
        leaves the dataset byte-identical.
        """
        offered: list[tuple[int, DatasetExample]] = []
        hashes: set[str] = set()
        earlier: dict[int, tuple[str, str]] = {}
        for n, example in examples:
            digest = content_hash(example.messages)
            if digest in self.dataset or digest in hashes:
                continue
            prior = self.refusals.decision(example.metadata.event_id, "example")
            if prior is not None:
                earlier[n] = prior
                continue
            hashes.add(digest)
            offered.append((n, example))
        admissions = self.balance.admit(
            [
                Proposal(
                    pattern_id=e.metadata.pattern_id,
                    query=e.messages[1].content,
                    answer=e.messages[-1].content,
                    score=e.metadata.value_score,
                )
                for _, e in offered
            ]
        )
        skipped: set[int] = set()
        decided = [(n, e, a) for (n, e), a in zip(offered, admissions, strict=True)]
        again = [
            (n, e, Admission(False, cast(Any, earlier[n][0]), earlier[n][1]))
            for n, e in examples
            if n in earlier
        ]
        for n, example, admission in decided + again:
            if admission.admitted or admission.reason is None:
                continue
            skipped.add(n)
            r = results[n]
            assert r is not None
            refusal = refusal_of(
                redacted_of[n],
                kind="example",
                reason=admission.reason,
                detail=admission.detail,
                decided_by="balance",
                pattern_id=example.metadata.pattern_id,
            )
            results[n] = replace(r, refusal=refusal)
        return [(n, e) for n, e in examples if n not in skipped]

    def _log_refusals(self, results: list[ExtractionResult | None]) -> None:
        """Log the batch's refusals and skips (once per event) and count the new ones."""
        refusals = [r.refusal for r in results if r is not None and r.refusal is not None]
        if not refusals:
            return
        for refusal, new in zip(refusals, self.refusals.append(refusals), strict=True):
            if not new:
                continue
            if refusal.kind == "pattern":
                self.metrics.candidates_refused.labels(refusal.reason, refusal.decided_by).inc()
                log.info(
                    "refused candidate %s (%s): %s",
                    refusal.event_id,
                    refusal.reason,
                    refusal.detail,
                )
            else:
                self.metrics.dataset_skipped.labels(refusal.reason).inc()

    def _store_all(
        self,
        *,
        candidates: Sequence[ScoredInteraction],
        extracted: dict[int, Extraction],
        vector_of: dict[int, Any],
        known: dict[str, Pattern],
        results: list[ExtractionResult | None],
        examples: list[tuple[int, DatasetExample]],
        redacted_of: dict[int, ScoredInteraction],
        system: str,
    ) -> None:
        for n, candidate in enumerate(candidates):
            event_id = candidate.event_id
            ex = extracted.get(n)
            if ex is not None and ex.pattern is None:
                assert ex.refusal is not None
                results[n] = ExtractionResult(
                    event_id=event_id,
                    status="refused",
                    learned_pattern=None,
                    dataset_written=False,
                    extractor=ex.refusal.decided_by,
                    llm_error=ex.llm_error,
                    refusal=ex.refusal,
                )
                continue
            if ex is not None and ex.pattern is not None:
                up = self.store.upsert(ex.pattern, vector_of[n])
                redacted, tags_from, error = ex.candidate, ex.pattern, ex.llm_error
                status, stored, similarity = up.status, up.pattern, up.similarity
                self.metrics.gate_passed.labels(ex.basis[0] if ex.basis else "unknown").inc()
            else:
                earlier = self._stored_for_repeat(candidates, n, results)
                if earlier is None and event_id not in known:
                    # a repeat, within this batch, of a candidate the gate refused
                    results[n] = next(
                        r for r in results[:n] if r is not None and r.event_id == event_id
                    )
                    continue
                found = known.get(event_id) or earlier
                assert found is not None
                stored = found
                redacted, tags_from, error = self.extractor.redact(candidate), stored, None
                status, similarity = "duplicate", None
                self.metrics.patterns_stored.labels("duplicate").inc()
            redacted_of[n] = redacted
            example = build_example(
                redacted, tags_from, system_prompt=system, pattern_id=stored.pattern_id
            )
            if example is not None:
                examples.append((n, example))
            results[n] = ExtractionResult(
                event_id=event_id,
                status=status,
                learned_pattern=self._learned(stored, status, event_id),
                dataset_written=False,
                extractor=tags_from.extractor,
                llm_error=error,
                similarity=similarity,
            )

    @staticmethod
    def _stored_for_repeat(
        candidates: Sequence[ScoredInteraction], n: int, results: list[ExtractionResult | None]
    ) -> Pattern | None:
        """The pattern an earlier copy of the same event in this batch went to (None: refused
        or not in the batch).
        """
        event_id = candidates[n].event_id
        for earlier, result in zip(candidates[:n], results[:n], strict=True):
            if earlier.event_id == event_id and result is not None:
                return None if result.learned_pattern is None else result.learned_pattern.pattern
        return None

    def apply_feedback(self, scored: Sequence[ScoredInteraction]) -> list[FeedbackResult]:
        """Apply pattern feedback from interactions listing ``patterns_used`` (idempotent)."""
        results: list[FeedbackResult] = []
        signals = [signal for s in scored for signal in signals_from(s)]
        if signals:
            with self.vector_lock:
                results = [self.store.apply_feedback(signal) for signal in signals]
        return results
