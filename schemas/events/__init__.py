"""Per-source event models and the lookup from (source, event type) to model."""

from __future__ import annotations

from schemas.base import Source, SourceEvent
from schemas.events import aidb, hybrid, ralph, vscode

EVENT_MODELS: dict[Source, dict[str, type[SourceEvent]]] = {}
for _module in (ralph, aidb, hybrid, vscode):
    for _model in _module.EVENTS:
        _types = _model.model_fields["event_type"].annotation.__args__
        for _event_type in _types:
            EVENT_MODELS.setdefault(_model.SOURCE, {})[_event_type] = _model


def event_types(source: Source | str) -> list[str]:
    """The event types a source may send, sorted."""
    return sorted(EVENT_MODELS[Source(source)])


__all__ = ["EVENT_MODELS", "aidb", "event_types", "hybrid", "ralph", "vscode"]
