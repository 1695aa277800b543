"""Qdrant look-ups behind reusability and novelty, and the interaction history they read.

Collections (created if missing; cosine; 384-d): ``interaction-history`` (one point per scored
query, payload ``ts`` = event time in epoch seconds) and ``skills-patterns`` (written by the
extractors; payload ``created_ts``). Both look-ups only count points strictly older than the
event and never the event itself, so replaying a topic reproduces the same scores.
Works with Qdrant local mode (a folder; one process at a time) and a Qdrant server URL.
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
    from qdrant_client import QdrantClient

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
            if not _is_local(client):  # local mode has no payload indexes
                client.create_payload_index(name, time_field, models.PayloadSchemaType.FLOAT)


def _is_local(client: QdrantClient) -> bool:
    return type(client._client).__name__ == "QdrantLocal"


@dataclass(frozen=True)
class HistoryPoint:
    """One scored query to remember."""

    event_id: str
    timestamp: datetime
    vector: Any
    source: str
    query: str


class VectorLookups:
    """The two similarity look-ups for a batch of interactions, and history upserts."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def lookup(self, points: Sequence[HistoryPoint]) -> list[Lookups]:
        """Reusability and novelty inputs for each point, in order.

        Earlier points of the same batch count as history (they are not in Qdrant yet on a
        first run; on a replay they are, and are not counted twice).
        """
        import numpy as np
        from qdrant_client import models

        if not points:
            return []
        requests: list[models.QueryRequest] = []
        for p in points:
            ts = p.timestamp.timestamp()
            requests.append(
                models.QueryRequest(
                    query=p.vector.tolist(),
                    limit=REUSABILITY_TOP_K,
                    score_threshold=REUSABILITY_MIN_COSINE,
                    with_payload=False,
                    filter=models.Filter(
                        must=[models.FieldCondition(key="ts", range=models.Range(lt=ts))],
                        must_not=[models.HasIdCondition(has_id=[interaction_point_id(p.event_id)])],
                    ),
                )
            )
        history = self.client.query_batch_points(INTERACTIONS, requests=requests)
        pattern_requests = [
            models.QueryRequest(
                query=p.vector.tolist(),
                limit=NOVELTY_TOP_K,
                score_threshold=NOVELTY_MIN_COSINE,
                with_payload=False,
                filter=models.Filter(
                    must=[
                        models.FieldCondition(
                            key="created_ts", range=models.Range(lt=p.timestamp.timestamp())
                        )
                    ]
                ),
            )
            for p in points
        ]
        patterns = self.client.query_batch_points(PATTERNS, requests=pattern_requests)

        matrix = np.stack([p.vector for p in points])
        sims = matrix @ matrix.T
        out = []
        for i, p in enumerate(points):
            ids = {str(h.id) for h in history[i].points}
            for j, q in enumerate(points):
                if (
                    j != i
                    and q.timestamp < p.timestamp
                    and q.event_id != p.event_id
                    and sims[i, j] >= REUSABILITY_MIN_COSINE
                ):
                    ids.add(interaction_point_id(q.event_id))
            best = max((h.score for h in patterns[i].points), default=None)
            out.append(
                Lookups(
                    similar_earlier=min(len(ids), REUSABILITY_TOP_K), max_pattern_similarity=best
                )
            )
        return out

    def remember(self, points: Sequence[HistoryPoint]) -> None:
        """Upsert the points into the interaction history (idempotent by event id)."""
        from qdrant_client import models

        if not points:
            return
        self.client.upsert(
            INTERACTIONS,
            points=[
                models.PointStruct(
                    id=interaction_point_id(p.event_id),
                    vector=p.vector.tolist(),
                    payload={
                        "ts": p.timestamp.timestamp(),
                        "event_id": p.event_id,
                        "source": p.source,
                        "query": p.query[:2000],
                    },
                )
                for p in points
            ],
            wait=True,
        )


def as_array(vector: Sequence[float]) -> np.ndarray:
    """A float32 numpy vector."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32)
