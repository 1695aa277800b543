"""Pydantic v2 models of every record learnstream reads or writes, and the topic catalog."""

from schemas.base import SCHEMA_VERSION, Source, SourceEvent
from schemas.dlq import DeadLetter
from schemas.errors import EventError
from schemas.events import EVENT_MODELS, event_types
from schemas.interaction import (
    FactorScores,
    Interaction,
    Outcome,
    ScoredInteraction,
    ScoreWeights,
)
from schemas.parsing import parse_event, parse_source, validate_event
from schemas.pattern import ChatMessage, DatasetExample, DatasetMetadata, LearnedPattern, Pattern
from schemas.topics import TOPICS, TopicSpec, telemetry_topic
from schemas.training import TrainingResult, TrainingTrigger, TriggerReason

CORE_MODELS = (
    Interaction,
    ScoredInteraction,
    Pattern,
    LearnedPattern,
    DatasetExample,
    TrainingTrigger,
    TrainingResult,
    DeadLetter,
)

__all__ = [
    "CORE_MODELS",
    "EVENT_MODELS",
    "SCHEMA_VERSION",
    "TOPICS",
    "ChatMessage",
    "DatasetExample",
    "DatasetMetadata",
    "DeadLetter",
    "EventError",
    "FactorScores",
    "Interaction",
    "LearnedPattern",
    "Outcome",
    "Pattern",
    "ScoreWeights",
    "ScoredInteraction",
    "Source",
    "SourceEvent",
    "TopicSpec",
    "TrainingResult",
    "TrainingTrigger",
    "TriggerReason",
    "event_types",
    "parse_event",
    "parse_source",
    "telemetry_topic",
    "validate_event",
]
