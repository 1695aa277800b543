"""Qdrant look-ups behind reusability and novelty, and the interaction history they read.

Collections (created if missing; cosine; 384-d): ``interaction-history`` (one point per scored
query; payload ``ts`` = event time and ``kt`` = arrival time (the Kafka record timestamp), both
epoch seconds, ``high_value`` and ``score``) and ``skills-patterns`` (written by the
extractors; payload ``created_ts``). Both look-ups read ``interaction-history`` only:

- reusability counts earlier similar interactions;
- novelty looks for earlier similar *high-value* interactions (those sent to extraction),
  not for extracted patterns: whether a pattern exists yet depends on the extraction agent's
  progress and the LLM's latency, which no replay reproduces, while the scorer itself writes
  every high-value interaction to the history before anything later is scored.

A look-up sees exactly the points that are visible to the event (`scorers.watermark`): event
time strictly earlier, arrival no later than the event's arrival plus the horizon, never the
event itself. Which points those are depends only on the log, and the worker holds each event
until all of them are in the history, so a replay reproduces the same scores.

Similarities are rounded to `SIMILARITY_DECIMALS` decimals before they are compared with a
threshold or used as a value, and computed the same way everywhere (`similarity_units`), so a
pair gives the same rounded cosine in the in-memory index, within a batch and from a Qdrant
server (whose hits near a threshold are recomputed here from their vectors).
Works with Qdrant local mode (a folder; one process at a time) and a Qdrant server URL.

In local mode, look-ups are answered from a `HistoryIndex`, an in-memory numpy copy of
``interaction-history``: local mode checks a search's payload filter in Python for every
stored point, which made each look-up cost O(points) (about 15 ms per event at 1,000 points,
150 ms at 10,000). The history collection's SQLite file also runs in WAL mode without a sync
per point (`tune_local_storage`), which cuts an upsert from about 1 ms to 0.15 ms per point.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from learnstream.core.errors import ResourceBusyError
from learnstream.core.settings import Settings
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
SIMILARITY_DECIMALS = 4
"""Cosines are rounded to this many decimals before any comparison or use."""
_UNITS = 10**SIMILARITY_DECIMALS
_NEAR = 10  # units: Qdrant-server hits this close to a threshold are recomputed here


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
    """Create both collections (cosine) and their payload indexes if missing."""
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
    else:  # idempotent; a history made by scorer 1.x has neither index yet
        client.create_payload_index(INTERACTIONS, "kt", models.PayloadSchemaType.FLOAT)
        client.create_payload_index(INTERACTIONS, "high_value", models.PayloadSchemaType.BOOL)


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


def similarity_units(sims: Any) -> np.ndarray:
    """Cosines (float64 products of `unit_float32` rows) as integers of 1e-4: rounded to
    float32 first (which absorbs BLAS's summation-order noise), then to 4 decimals."""
    import numpy as np

    as32 = np.asarray(sims, dtype=np.float64).astype(np.float32).astype(np.float64)
    return np.rint(as32 * _UNITS).astype(np.int64)


def threshold_units(threshold: float) -> int:
    """A similarity threshold in the units of `similarity_units`."""
    return round(threshold * _UNITS)


def cosine_units(queries: Any, stored: Any) -> np.ndarray:
    """The rounded cosines of every query row with every stored row, as `similarity_units`."""
    import numpy as np

    q = unit_float32(queries).astype(np.float64)
    v = unit_float32(stored).astype(np.float64)
    return similarity_units(q @ v.T)


def _time_of(payload: dict[str, Any] | None, field: str) -> float:
    value = (payload or {}).get(field)
    return float(value) if isinstance(value, int | float) else float("inf")


def _arrival_of(payload: dict[str, Any] | None) -> float:
    # A point written before arrival times were stored counts as arrived at the start.
    value = (payload or {}).get("kt")
    return float(value) if isinstance(value, int | float) else 0.0


class HistoryIndex:
    """An exact in-memory copy of a collection's vectors, times and flags, for local mode.

    Local mode is one process per folder, so this process sees every write: the copy is
    filled from the collection once and then told of every write (`VectorLookups.remember`).
    Searches answer what the Qdrant query of `VectorLookups` would: rounded cosine
    (`similarity_units`) at or above the threshold, time strictly earlier, arrival no later
    than the given bound, high value if asked, never an excluded id, best first (ties by id),
    at most ``limit``.
    """

    def __init__(self) -> None:
        import numpy as np

        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._ts = np.zeros(0, dtype=np.float64)
        self._arrival = np.zeros(0, dtype=np.float64)
        self._high = np.zeros(0, dtype=bool)
        self._late = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def load(
        cls, client: QdrantClient, collection: str = INTERACTIONS, time_field: str = "ts"
    ) -> HistoryIndex:
        """A copy of what ``collection`` holds now (vectors, ``time_field``, ``kt``, flags)."""
        index = cls()
        offset = None
        while True:
            points, offset = client.scroll(
                collection,
                limit=1000,
                offset=offset,
                with_vectors=True,
                with_payload=[time_field, "kt", "high_value", "late"],
            )
            if points:
                index.add(
                    [str(p.id) for p in points],
                    [p.vector for p in points],
                    # Qdrant's range filter never matches a point without the field.
                    [_time_of(p.payload, time_field) for p in points],
                    arrivals=[_arrival_of(p.payload) for p in points],
                    high_value=[(p.payload or {}).get("high_value") is True for p in points],
                    late=[(p.payload or {}).get("late") is True for p in points],
                )
            if offset is None:
                return index

    def retime(self, ids: Sequence[str], timestamps: Sequence[float]) -> None:
        """Change the time of stored points (a payload-only update); unknown ids are ignored."""
        for pid, ts_value in zip(ids, timestamps, strict=True):
            row = self._rows.get(pid)
            if row is not None:
                self._ts[row] = ts_value

    def add(
        self,
        ids: Sequence[str],
        vectors: Any,
        timestamps: Sequence[float],
        *,
        arrivals: Sequence[float] | None = None,
        high_value: Sequence[bool] | None = None,
        late: Sequence[bool] | None = None,
    ) -> None:
        """Insert or replace points (the same id is one point, as in Qdrant).

        Vectors pass through `unit_float32`. Writers send Qdrant the same `unit_float32`
        vectors, and it is idempotent, so a point added live and the same point loaded after a
        restart (`load`) are bit-identical by construction, on any CPU. Arrivals default to 0
        (visible to every event), flags to false.
        """
        import numpy as np

        if not len(ids):
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(ids) or len(timestamps) != len(ids):
            raise ValueError(f"{len(ids)} ids need as many vectors and timestamps")
        arrivals = [0.0] * len(ids) if arrivals is None else arrivals
        high_value = [False] * len(ids) if high_value is None else high_value
        late = [False] * len(ids) if late is None else late
        if not len(arrivals) == len(high_value) == len(late) == len(ids):
            raise ValueError(f"{len(ids)} ids need as many arrivals and flags")
        vecs = unit_float32(vecs)
        n = len(self._ids)
        needed = n + len(ids)
        if n and vecs.shape[1] != self._vectors.shape[1]:
            raise ValueError(f"{vecs.shape[1]}-d vectors in a {self._vectors.shape[1]}-d history")
        if needed > len(self._vectors):
            capacity = max(1024, needed, 2 * len(self._vectors))
            grown = np.zeros((capacity, vecs.shape[1]), dtype=np.float32)
            ts = np.zeros(capacity, dtype=np.float64)
            arrival = np.zeros(capacity, dtype=np.float64)
            high = np.zeros(capacity, dtype=bool)
            was_late = np.zeros(capacity, dtype=bool)
            if n:
                grown[:n], ts[:n] = self._vectors[:n], self._ts[:n]
                arrival[:n], high[:n] = self._arrival[:n], self._high[:n]
                was_late[:n] = self._late[:n]
            self._vectors, self._ts, self._arrival = grown, ts, arrival
            self._high, self._late = high, was_late
        for pid, vec, ts_value, kt, flag, lag in zip(
            ids, vecs, timestamps, arrivals, high_value, late, strict=True
        ):
            row = self._rows.get(pid)
            if row is None:
                row = self._rows[pid] = len(self._ids)
                self._ids.append(pid)
            self._vectors[row] = vec
            self._ts[row] = ts_value
            self._arrival[row] = kt
            self._high[row] = flag
            self._late[row] = lag

    def stored(self, ids: Sequence[str]) -> dict[str, tuple[float, bool]]:
        """The stored arrival and late flag of the points among ``ids`` that exist."""
        out = {}
        for pid in ids:
            row = self._rows.get(pid)
            if row is not None:
                out[pid] = (float(self._arrival[row]), bool(self._late[row]))
        return out

    def search(
        self,
        queries: Any,
        before: Sequence[float],
        exclude: Sequence[str],
        threshold: float,
        limit: int,
        *,
        arrived_by: Sequence[float] | None = None,
        high_value_only: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """For each query row: the ``(id, rounded cosine)`` hits, best first.

        ``before``: event times (strictly earlier points only); ``arrived_by``: the latest
        arrival each query may see (default: any); ``high_value_only``: only high-value
        points.
        """
        import numpy as np

        n = len(self._ids)
        if n == 0 or not len(before):
            return [[] for _ in before]
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or len(q) != len(before) or len(exclude) != len(before):
            raise ValueError(f"{len(before)} cut-off times need as many queries and exclusions")
        # BLAS rounds a dot product differently by the row's place in its tiles (live order
        # and reload order differ); float32 products are exact in float64 and the float64
        # sums differ only around 1e-16, so rounding to float32 gives the same cosines.
        units = cosine_units(q, self._vectors[:n])
        ok = (units >= threshold_units(threshold)) & (
            self._ts[:n][None, :] < np.asarray(before, dtype=np.float64)[:, None]
        )
        if arrived_by is not None:
            bound = np.asarray(arrived_by, dtype=np.float64)[:, None]
            ok &= self._arrival[:n][None, :] <= bound
        if high_value_only:
            ok &= self._high[:n][None, :]
        out: list[list[tuple[str, float]]] = []
        for i, excluded in enumerate(exclude):
            row = self._rows.get(excluded)
            if row is not None:
                ok[i, row] = False
            idx = np.flatnonzero(ok[i])
            if len(idx) > limit:  # keep what could make the top ``limit``, ties included
                kth = np.partition(units[i, idx], len(idx) - limit)[len(idx) - limit]
                idx = idx[units[i, idx] >= kth]
            hits = sorted((-int(units[i, j]), self._ids[j]) for j in idx)[:limit]
            out.append([(pid, -u / _UNITS) for u, pid in hits])
        return out


@dataclass(frozen=True)
class HistoryPoint:
    """One interaction's query vector, for the look-ups and then for the history.

    ``arrival``: its Kafka record timestamp (epoch seconds; None when unknown: it then counts
    as arrived at the start, and its own look-ups see any arrival). ``high_value``, ``score``
    and ``late`` are what scoring decided (they are stored; novelty reads ``high_value``).
    """

    event_id: str
    timestamp: datetime
    vector: Any
    source: str
    query: str
    arrival: float | None = None
    high_value: bool = False
    score: float | None = None
    late: bool = False


def _visible_filter(point: HistoryPoint, arrived_by: float, *, high_value: bool) -> models.Filter:
    """Qdrant's filter for the points visible to ``point`` (never the point itself)."""
    from qdrant_client import models

    must: list[Any] = [
        models.FieldCondition(key="ts", range=models.Range(lt=point.timestamp.timestamp()))
    ]
    if math.isfinite(arrived_by):
        must.append(
            models.Filter(
                should=[
                    models.FieldCondition(key="kt", range=models.Range(lte=arrived_by)),
                    models.IsEmptyCondition(is_empty=models.PayloadField(key="kt")),
                ]
            )
        )
    if high_value:
        must.append(models.FieldCondition(key="high_value", match=models.MatchValue(value=True)))
    return models.Filter(
        must=must,
        must_not=[models.HasIdCondition(has_id=[interaction_point_id(point.event_id)])],
    )


def _arrived_by(point: HistoryPoint, horizon_s: float | None) -> float:
    if point.arrival is None or horizon_s is None:
        return math.inf
    return point.arrival + horizon_s


Decide = Callable[[int, Lookups], bool]
"""Called per point, in (timestamp, event id) order, with its look-ups: is it high value?"""


class VectorLookups:
    """The two similarity look-ups for a batch of interactions, and history upserts.

    ``history_index`` (default: on in local mode) answers look-ups from a `HistoryIndex`; a
    Qdrant server answers them itself with its payload indexes on ``ts``, ``kt`` and
    ``high_value``.
    """

    def __init__(self, client: QdrantClient, *, history_index: bool | None = None) -> None:
        self.client = client
        self._use_index = is_local(client) if history_index is None else history_index
        self._index: HistoryIndex | None = None

    @property
    def history(self) -> HistoryIndex | None:
        """The in-memory history copy (loaded on first use), or None when Qdrant answers."""
        if self._use_index and self._index is None:
            self._index = HistoryIndex.load(self.client)
        return self._index

    @property
    def patterns(self) -> HistoryIndex | None:
        """None: scoring no longer reads ``skills-patterns`` (novelty reads the history), so
        no in-memory copy of it is kept for `PatternStore` to maintain."""
        return None

    def _index_hits(
        self,
        index: HistoryIndex,
        points: Sequence[HistoryPoint],
        arrived_by: Sequence[float],
        *,
        novelty: bool,
    ) -> list[list[tuple[str, float]]]:
        return index.search(
            [p.vector for p in points],
            [p.timestamp.timestamp() for p in points],
            [interaction_point_id(p.event_id) for p in points],
            NOVELTY_MIN_COSINE if novelty else REUSABILITY_MIN_COSINE,
            NOVELTY_TOP_K if novelty else REUSABILITY_TOP_K,
            arrived_by=arrived_by,
            high_value_only=novelty,
        )

    def _server_hits(
        self, points: Sequence[HistoryPoint], arrived_by: Sequence[float], *, novelty: bool
    ) -> list[list[tuple[str, float]]]:
        """Qdrant's hits, made to agree with `HistoryIndex` to the last rounded digit.

        Qdrant computes cosines in float32 with its own kernels, which can differ from
        `similarity_units` in the last bits. It is asked with a threshold one rounding step
        lower and for twice the hits; hits within `_NEAR` units of the threshold (for
        reusability) or of the best hit (for novelty, whose value is the best cosine) are
        recomputed here from their stored vectors.
        """
        import numpy as np
        from qdrant_client import models

        threshold = NOVELTY_MIN_COSINE if novelty else REUSABILITY_MIN_COSINE
        limit = NOVELTY_TOP_K if novelty else REUSABILITY_TOP_K
        t_units = threshold_units(threshold)
        requests = [
            models.QueryRequest(
                query=unit_float32(p.vector)[0].tolist(),
                limit=2 * limit,
                score_threshold=(t_units - _NEAR) / _UNITS,
                with_payload=False,
                filter=_visible_filter(p, by, high_value=novelty),
            )
            for p, by in zip(points, arrived_by, strict=True)
        ]
        found = self.client.query_batch_points(INTERACTIONS, requests=requests)
        raw = [[(str(h.id), float(h.score)) for h in r.points] for r in found]
        recheck: set[str] = set()
        for hits in raw:
            best = max((s for _, s in hits), default=None)
            for pid, score in hits:
                units = score * _UNITS
                if abs(units - t_units) <= _NEAR or (
                    novelty and best is not None and (best - score) * _UNITS <= _NEAR
                ):
                    recheck.add(pid)
        exact: dict[str, Any] = {}
        if recheck:
            for rec in self.client.retrieve(INTERACTIONS, ids=sorted(recheck), with_vectors=True):
                exact[str(rec.id)] = rec.vector
        out: list[list[tuple[str, float]]] = []
        for p, hits in zip(points, raw, strict=True):
            ids = [pid for pid, _ in hits if pid in exact]
            recomputed: dict[str, int] = {}
            if ids:
                units_row = cosine_units([p.vector], np.stack([exact[pid] for pid in ids]))[0]
                recomputed = dict(zip(ids, (int(u) for u in units_row), strict=True))
            row = []
            for pid, score in hits:
                units = recomputed.get(pid, int(similarity_units([score])[0]))
                if units >= t_units:
                    row.append((pid, units / _UNITS))
            row.sort(key=lambda h: (-h[1], h[0]))
            out.append(row[:limit])
        return out

    def _history(
        self, points: Sequence[HistoryPoint], arrived_by: Sequence[float]
    ) -> tuple[list[set[str]], list[float | None]]:
        """From the stored history, per point: the ids of visible similar interactions, and
        the best rounded cosine of a visible similar high-value one (None: none)."""
        index = self.history
        if index is not None:
            similar = self._index_hits(index, points, arrived_by, novelty=False)
            known = self._index_hits(index, points, arrived_by, novelty=True)
        else:
            similar = self._server_hits(points, arrived_by, novelty=False)
            known = self._server_hits(points, arrived_by, novelty=True)
        return (
            [{pid for pid, _ in hits} for hits in similar],
            [max((s for _, s in hits), default=None) for hits in known],
        )

    def _history_hits(self, points: Sequence[HistoryPoint]) -> list[set[str]]:
        """Ids of earlier similar interactions in the stored history, per point."""
        return self._history(points, [math.inf] * len(points))[0]

    def stored(self, event_ids: Sequence[str]) -> dict[str, tuple[float, bool]]:
        """Arrival and late flag of the events among ``event_ids`` that the history holds
        with a known arrival (a repeat of an event scores like its first copy)."""
        ids = {interaction_point_id(e): e for e in event_ids}
        if not ids:
            return {}
        index = self.history
        if index is not None:
            found = index.stored(list(ids))
        else:
            records = self.client.retrieve(
                INTERACTIONS, ids=list(ids), with_payload=["kt", "late"], with_vectors=False
            )
            found = {
                str(r.id): (_arrival_of(r.payload), (r.payload or {}).get("late") is True)
                for r in records
            }
        return {ids[pid]: v for pid, v in found.items() if v[0] > 0}

    def lookup(
        self,
        points: Sequence[HistoryPoint],
        *,
        horizon_s: float | None = None,
        decide: Decide | None = None,
    ) -> list[Lookups]:
        """Reusability and novelty inputs for each point (in the order given).

        A point sees the interactions visible to it (event time strictly earlier, arrival at
        most its arrival + ``horizon_s``; None: any arrival) in the stored history and among
        the earlier points of the same batch (not in Qdrant yet on a first run; on a replay
        they are, and are not counted twice). Points are taken in (timestamp, event id)
        order; ``decide`` is told each one's look-ups and says whether it is high value, which
        makes it count for the novelty of the later points of the batch (without ``decide``,
        batch points never do).
        """
        import numpy as np

        if not points:
            return []
        arrived_by = [_arrived_by(p, horizon_s) for p in points]
        similar, known = self._history(points, arrived_by)

        units = cosine_units(
            np.stack([p.vector for p in points]), np.stack([p.vector for p in points])
        )
        ts = np.array([p.timestamp.timestamp() for p in points], dtype=np.float64)
        arrival = np.array([0.0 if p.arrival is None else p.arrival for p in points])
        ids = [interaction_point_id(p.event_id) for p in points]
        reuse_t, novelty_t = (
            threshold_units(REUSABILITY_MIN_COSINE),
            threshold_units(NOVELTY_MIN_COSINE),
        )
        high = np.zeros(len(points), dtype=bool)
        out: list[Lookups | None] = [None] * len(points)
        order = sorted(range(len(points)), key=lambda k: (ts[k], points[k].event_id))
        for i in order:
            p = points[i]
            visible = (ts < ts[i]) & (arrival <= arrived_by[i])
            visible &= np.array([q.event_id != p.event_id for q in points])
            found = similar[i] | {ids[j] for j in np.flatnonzero(visible & (units[i] >= reuse_t))}
            best = known[i]
            close = np.flatnonzero(visible & high & (units[i] >= novelty_t))
            if len(close):
                in_batch = int(units[i, close].max()) / _UNITS
                best = in_batch if best is None else max(best, in_batch)
            result = Lookups(
                similar_earlier=min(len(found), REUSABILITY_TOP_K),
                max_known_similarity=best,
                horizon_s=horizon_s,
            )
            out[i] = result
            if decide is not None:
                high[i] = decide(i, result)
        return [r for r in out if r is not None]

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
                        "kt": 0.0 if p.arrival is None else p.arrival,
                        "high_value": p.high_value,
                        "score": p.score,
                        "late": p.late,
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
                arrivals=[0.0 if p.arrival is None else p.arrival for p in points],
                high_value=[p.high_value for p in points],
                late=[p.late for p in points],
            )


def as_array(vector: Sequence[float]) -> np.ndarray:
    """A float32 numpy vector."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32)
