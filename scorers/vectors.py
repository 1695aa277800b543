"""Qdrant look-ups behind reusability and novelty, and the interaction history they read.

Collections (created if missing; cosine; 384-d): ``interaction-history`` (one point per scored
query, payload ``ts`` = event time in epoch seconds) and ``skills-patterns`` (written by the
extractors; payload ``created_ts``). Both look-ups only count points strictly older than the
event and never the event itself, so replaying a topic reproduces the same scores.
Works with Qdrant local mode (a folder; one process at a time) and a Qdrant server URL.

In local mode, both look-ups are answered from `HistoryIndex`es, in-memory numpy copies of
``interaction-history`` and ``skills-patterns``: local mode checks a search's payload filter in
Python for every stored point, which made each look-up cost O(points) (about 15 ms per event
at 1,000 points, 150 ms at 10,000). The history collection's SQLite file also runs in WAL
mode without a sync per point (`tune_local_storage`), which cuts an upsert from about 1 ms
to 0.15 ms per point.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from learnstream.errors import ResourceBusyError
from learnstream.settings import Settings
from scorers.score import (
    NOVELTY_MIN_COSINE,
    NOVELTY_TOP_K,
    REUSABILITY_MIN_COSINE,
    REUSABILITY_TOP_K,
    Lookups,
)

if TYPE_CHECKING:
    import numpy as np
    from qdrant_client import QdrantClient, models

INTERACTIONS = "interaction-history"
PATTERNS = "skills-patterns"
NAMESPACE = uuid.UUID("2f0b0d3c-8d0e-4f6a-a1a4-5b7f3c9e6d21")


def interaction_point_id(event_id: str) -> str:
    """Deterministic Qdrant point id of an interaction."""
    return str(uuid.uuid5(NAMESPACE, f"interaction:{event_id}"))


def qdrant_client(settings: Settings) -> QdrantClient:
    """A client for the configured Qdrant server, or local mode under the data directory."""
    from qdrant_client import QdrantClient

    if settings.qdrant.url:
        key = settings.qdrant.api_key.get_secret_value() if settings.qdrant.api_key else None
        return QdrantClient(url=settings.qdrant.url, api_key=key, timeout=30)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=str(settings.qdrant_path))
    except RuntimeError as exc:
        if "already accessed by another instance" not in str(exc):
            raise
        raise ResourceBusyError(
            f"Qdrant folder {settings.qdrant_path} is in use by another process (local mode "
            "allows one); stop it, or share a Qdrant server: LEARNSTREAM_QDRANT__URL"
        ) from None


def ensure_collections(client: QdrantClient, dimensions: int) -> None:
    """Create both collections (cosine) and their time indexes if missing."""
    from qdrant_client import models

    for name, time_field in ((INTERACTIONS, "ts"), (PATTERNS, "created_ts")):
        if not client.collection_exists(name):
            client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=dimensions, distance=models.Distance.COSINE
                ),
            )
            if not is_local(client):  # local mode has no payload indexes
                client.create_payload_index(name, time_field, models.PayloadSchemaType.FLOAT)
    if is_local(client):
        tune_local_storage(client, INTERACTIONS)


def is_local(client: QdrantClient) -> bool:
    """True for Qdrant local mode (an embedded folder), False for a server."""
    return type(client._client).__name__ == "QdrantLocal"


def tune_local_storage(client: QdrantClient, collection: str) -> bool:
    """Put a local-mode collection's SQLite file in WAL mode with ``synchronous=NORMAL``.

    Local mode commits (and fsyncs) once per point. With WAL and NORMAL, commits survive a
    crash of the process; only an OS crash or power loss can lose the last ones, whose
    offsets may already be committed: later scores then miss a few earlier similar queries
    (a replay from the start rebuilds them). That suits the interaction history; other
    collections keep the default.
    Returns False (and changes nothing) if this qdrant-client keeps its storage elsewhere.
    """
    coll = getattr(client._client, "collections", {}).get(collection)
    conn = getattr(getattr(coll, "storage", None), "storage", None)
    if conn is None or not hasattr(conn, "execute"):
        return False
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return True


def unit_float32(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length (in float64, rounded to float32): the one stored form.

    Idempotent: rounding a float64 unit row to float32 moves it far less than half a float32
    step, so normalizing the result again gives the same floats (it is re-applied until
    stable, at most three times, to make that hold by construction). Storing this form and
    normalizing whatever is read back therefore never changes a stored vector.
    """
    import numpy as np

    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim == 1:
        vecs = vecs[None, :]
    for _ in range(3):
        v64 = vecs.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", v64, v64))[:, None]
        unit = np.where(norms > 1e-12, v64 / np.where(norms > 1e-12, norms, 1.0), v64)
        unit32 = unit.astype(np.float32)
        if np.array_equal(unit32, vecs):
            break
        vecs = unit32
    return vecs


def _time_of(payload: dict[str, Any] | None, field: str) -> float:
    value = (payload or {}).get(field)
    return float(value) if isinstance(value, int | float) else float("inf")


class HistoryIndex:
    """An exact in-memory copy of a collection's vectors and times, for Qdrant local mode.

    Local mode is one process per folder, so this process sees every write: the copy is
    filled from the collection once and then told of every write (``interaction-history`` by
    `VectorLookups.remember`, ``skills-patterns`` by the extraction stage's `PatternStore`).
    Searches answer what Qdrant would: cosine at or above the threshold, time strictly
    earlier, never an excluded id, best first, at most ``limit``.
    """

    def __init__(self) -> None:
        import numpy as np

        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._ts = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def load(
        cls, client: QdrantClient, collection: str = INTERACTIONS, time_field: str = "ts"
    ) -> HistoryIndex:
        """A copy of what ``collection`` holds now (its vectors and ``time_field``)."""
        index = cls()
        offset = None
        while True:
            points, offset = client.scroll(
                collection, limit=1000, offset=offset, with_vectors=True, with_payload=[time_field]
            )
            if points:
                index.add(
                    [str(p.id) for p in points],
                    [p.vector for p in points],
                    # Qdrant's range filter never matches a point without the field.
                    [_time_of(p.payload, time_field) for p in points],
                )
            if offset is None:
                return index

    def retime(self, ids: Sequence[str], timestamps: Sequence[float]) -> None:
        """Change the time of stored points (a payload-only update); unknown ids are ignored."""
        for pid, ts_value in zip(ids, timestamps, strict=True):
            row = self._rows.get(pid)
            if row is not None:
                self._ts[row] = ts_value

    def add(self, ids: Sequence[str], vectors: Any, timestamps: Sequence[float]) -> None:
        """Insert or replace points (the same id is one point, as in Qdrant).

        Vectors pass through `unit_float32`. Writers send Qdrant the same `unit_float32`
        vectors, and it is idempotent, so a point added live and the same point loaded after a
        restart (`load`) are bit-identical by construction, on any CPU.
        """
        import numpy as np

        if not len(ids):
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(ids) or len(timestamps) != len(ids):
            raise ValueError(f"{len(ids)} ids need as many vectors and timestamps")
        vecs = unit_float32(vecs)
        n = len(self._ids)
        needed = n + len(ids)
        if n and vecs.shape[1] != self._vectors.shape[1]:
            raise ValueError(f"{vecs.shape[1]}-d vectors in a {self._vectors.shape[1]}-d history")
        if needed > len(self._vectors):
            capacity = max(1024, needed, 2 * len(self._vectors))
            grown = np.zeros((capacity, vecs.shape[1]), dtype=np.float32)
            ts = np.zeros(capacity, dtype=np.float64)
            if n:
                grown[:n], ts[:n] = self._vectors[:n], self._ts[:n]
            self._vectors, self._ts = grown, ts
        for pid, vec, ts_value in zip(ids, vecs, timestamps, strict=True):
            row = self._rows.get(pid)
            if row is None:
                row = self._rows[pid] = len(self._ids)
                self._ids.append(pid)
            self._vectors[row] = vec
            self._ts[row] = ts_value

    def search(
        self,
        queries: Any,
        before: Sequence[float],
        exclude: Sequence[str],
        threshold: float,
        limit: int,
    ) -> list[list[tuple[str, float]]]:
        """For each query row: the ``(id, cosine)`` hits, best first."""
        import numpy as np

        n = len(self._ids)
        if n == 0 or not len(before):
            return [[] for _ in before]
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or len(q) != len(before) or len(exclude) != len(before):
            raise ValueError(f"{len(before)} cut-off times need as many queries and exclusions")
        q = unit_float32(q).astype(np.float64)
        # BLAS rounds a dot product differently by the row's place in its tiles (live order
        # and reload order differ); float32 products are exact in float64 and the float64
        # sums differ only around 1e-16, so rounding to float32 gives the same cosines.
        sims = (q @ self._vectors[:n].T.astype(np.float64)).astype(np.float32)
        ok = (sims >= threshold) & (self._ts[:n][None, :] < np.asarray(before)[:, None])
        out: list[list[tuple[str, float]]] = []
        for i, excluded in enumerate(exclude):
            row = self._rows.get(excluded)
            if row is not None:
                ok[i, row] = False
            idx = np.flatnonzero(ok[i])
            if len(idx) > limit:
                idx = idx[np.argpartition(-sims[i, idx], limit - 1)[:limit]]
            idx = idx[np.argsort(-sims[i, idx], kind="stable")]
            out.append([(self._ids[j], float(sims[i, j])) for j in idx])
        return out


@dataclass(frozen=True)
class HistoryPoint:
    """One scored query to remember."""

    event_id: str
    timestamp: datetime
    vector: Any
    source: str
    query: str


def _earlier_similar(
    point: HistoryPoint, time_field: str, limit: int, threshold: float, *, exclude_self: bool
) -> models.QueryRequest:
    """A search for points similar to ``point`` and strictly older than it."""
    from qdrant_client import models

    return models.QueryRequest(
        query=point.vector.tolist(),
        limit=limit,
        score_threshold=threshold,
        with_payload=False,
        filter=models.Filter(
            must=[
                models.FieldCondition(
                    key=time_field, range=models.Range(lt=point.timestamp.timestamp())
                )
            ],
            must_not=(
                [models.HasIdCondition(has_id=[interaction_point_id(point.event_id)])]
                if exclude_self
                else None
            ),
        ),
    )


class VectorLookups:
    """The two similarity look-ups for a batch of interactions, and history upserts.

    ``history_index`` (default: on in local mode) answers history look-ups from a
    `HistoryIndex`; a Qdrant server answers them itself with its payload index on ``ts``.
    """

    def __init__(self, client: QdrantClient, *, history_index: bool | None = None) -> None:
        self.client = client
        self._use_index = is_local(client) if history_index is None else history_index
        self._index: HistoryIndex | None = None
        self._patterns: HistoryIndex | None = None

    @property
    def history(self) -> HistoryIndex | None:
        """The in-memory history copy (loaded on first use), or None when Qdrant answers."""
        if self._use_index and self._index is None:
            self._index = HistoryIndex.load(self.client)
        return self._index

    @property
    def patterns(self) -> HistoryIndex | None:
        """The in-memory copy of ``skills-patterns`` (loaded on first use), or None.

        Whoever writes patterns in this process must keep it current (`PatternStore` does,
        when given it).
        """
        if self._use_index and self._patterns is None:
            self._patterns = HistoryIndex.load(self.client, PATTERNS, "created_ts")
        return self._patterns

    def _pattern_similarity(self, points: Sequence[HistoryPoint]) -> list[float | None]:
        """The best cosine of an earlier stored pattern, per point (None: none close)."""
        index = self.patterns
        if index is not None:
            hits = index.search(
                [p.vector for p in points],
                [p.timestamp.timestamp() for p in points],
                [""] * len(points),
                NOVELTY_MIN_COSINE,
                NOVELTY_TOP_K,
            )
            return [max((score for _, score in h), default=None) for h in hits]
        requests = [
            _earlier_similar(p, "created_ts", NOVELTY_TOP_K, NOVELTY_MIN_COSINE, exclude_self=False)
            for p in points
        ]
        found = self.client.query_batch_points(PATTERNS, requests=requests)
        return [max((h.score for h in r.points), default=None) for r in found]

    def _history_hits(self, points: Sequence[HistoryPoint]) -> list[set[str]]:
        """Ids of earlier similar interactions in the stored history, per point."""

        index = self.history
        if index is not None:
            hits = index.search(
                [p.vector for p in points],
                [p.timestamp.timestamp() for p in points],
                [interaction_point_id(p.event_id) for p in points],
                REUSABILITY_MIN_COSINE,
                REUSABILITY_TOP_K,
            )
            return [{pid for pid, _ in h} for h in hits]
        requests = [
            _earlier_similar(p, "ts", REUSABILITY_TOP_K, REUSABILITY_MIN_COSINE, exclude_self=True)
            for p in points
        ]
        history = self.client.query_batch_points(INTERACTIONS, requests=requests)
        return [{str(h.id) for h in r.points} for r in history]

    def lookup(self, points: Sequence[HistoryPoint]) -> list[Lookups]:
        """Reusability and novelty inputs for each point, in order.

        Earlier points of the same batch count as history (they are not in Qdrant yet on a
        first run; on a replay they are, and are not counted twice).
        """
        import numpy as np

        if not points:
            return []
        history = self._history_hits(points)
        best_pattern = self._pattern_similarity(points)

        matrix = np.stack([p.vector for p in points])
        sims = matrix @ matrix.T
        out = []
        for i, p in enumerate(points):
            ids = history[i]
            for j, q in enumerate(points):
                if (
                    j != i
                    and q.timestamp < p.timestamp
                    and q.event_id != p.event_id
                    and sims[i, j] >= REUSABILITY_MIN_COSINE
                ):
                    ids.add(interaction_point_id(q.event_id))
            out.append(
                Lookups(
                    similar_earlier=min(len(ids), REUSABILITY_TOP_K),
                    max_pattern_similarity=best_pattern[i],
                )
            )
        return out

    def remember(self, points: Sequence[HistoryPoint]) -> None:
        """Upsert the points into the interaction history (idempotent by event id)."""
        from qdrant_client import models

        if not points:
            return
        vectors = unit_float32([p.vector for p in points])
        self.client.upsert(
            INTERACTIONS,
            points=[
                models.PointStruct(
                    id=interaction_point_id(p.event_id),
                    vector=vector.tolist(),
                    payload={
                        "ts": p.timestamp.timestamp(),
                        "event_id": p.event_id,
                        "source": p.source,
                        "query": p.query[:2000],
                    },
                )
                for p, vector in zip(points, vectors, strict=True)
            ],
            wait=True,
        )
        if self._index is not None:
            self._index.add(
                [interaction_point_id(p.event_id) for p in points],
                vectors,
                [p.timestamp.timestamp() for p in points],
            )


def as_array(vector: Sequence[float]) -> np.ndarray:
    """A float32 numpy vector."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32)
