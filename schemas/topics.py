"""The topic catalog (`TOPICS`): the one place topic names, keys, partitions, retention live.

`learnstream topics create` and ``deploy/redpanda/topics.sh`` are checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.base import Source

DAY_MS = 24 * 60 * 60 * 1000
FOREVER = -1


@dataclass(frozen=True)
class TopicSpec:
    """One topic: what it carries and how it is configured."""

    name: str
    key: str
    value: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"] = "delete"

    def config(self) -> dict[str, str]:
        """Topic configs for CreateTopics / ``rpk topic create -c``."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


def _telemetry(source: Source, key: str) -> TopicSpec:
    return TopicSpec(
        name=f"telemetry.{source.value}",
        key=key,
        value=f"the {source.value} event as the tool sent it",
        partitions=6,
        retention_ms=30 * DAY_MS,
    )


TELEMETRY: dict[Source, TopicSpec] = {
    Source.RALPH: _telemetry(Source.RALPH, "task_id"),
    Source.AIDB: _telemetry(Source.AIDB, "session_id"),
    Source.HYBRID: _telemetry(Source.HYBRID, "conversation_id"),
    Source.VSCODE: _telemetry(Source.VSCODE, "session_id"),
}
INTERACTIONS_SCORED = TopicSpec(
    "interactions.scored", "event_id", "ScoredInteraction", 6, 30 * DAY_MS
)
PATTERNS_CANDIDATES = TopicSpec(
    "patterns.candidates", "event_id", "ScoredInteraction", 3, 30 * DAY_MS
)
PATTERNS_LEARNED = TopicSpec("patterns.learned", "pattern_id", "LearnedPattern", 3, FOREVER)
TRAINING_TRIGGERS = TopicSpec("training.triggers", "base_model", "TrainingTrigger", 1, 90 * DAY_MS)
TRAINING_RESULTS = TopicSpec("training.results", "base_model", "TrainingResult", 1, FOREVER)
# Dead letters keep their original bytes (secrets included, so that a fixed pipeline can
# replay them): a short retention.
DLQ = TopicSpec("telemetry.dlq", "original key", "DeadLetter", 3, 7 * DAY_MS)

TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        *TELEMETRY.values(),
        INTERACTIONS_SCORED,
        PATTERNS_CANDIDATES,
        PATTERNS_LEARNED,
        TRAINING_TRIGGERS,
        TRAINING_RESULTS,
        DLQ,
    )
}


def telemetry_topic(source: Source | str) -> str:
    """The topic a source's events are published to."""
    return TELEMETRY[Source(source)].name
