"""Factories shared by the extraction tests (no tests here)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from schemas.base import Source
from schemas.interaction import Interaction, Outcome, ScoredInteraction

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

RESPONSE = """Patch the Consumer class with a MagicMock whose `poll()` returns queued messages. \
The fixture yields it and checks it was closed.

1. Create a list of fake messages.
2. Patch `app.sink.Consumer` with a factory returning the mock.
3. Assert `close()` was called after the test.

```python
import pytest
from unittest.mock import MagicMock
from confluent_kafka import Consumer


@pytest.fixture
def fake_consumer(monkeypatch):
    consumer = MagicMock(spec=Consumer)
    monkeypatch.setattr("app.sink.Consumer", lambda conf: consumer)
    yield consumer
    consumer.close.assert_called_once()
```
"""


def candidate(
    event_id: str = "evt-1",
    query: str | None = "How do I write a pytest fixture for a Kafka consumer?",
    response: str | None = RESPONSE,
    *,
    source: Source = Source.AIDB,
    score: float | None = 0.85,
    outcome: Outcome = Outcome.SUCCESS,
    at: datetime | None = None,
    minutes: int = 0,
    patterns_used: Sequence[str] = (),
    tools_used: Sequence[str] = (),
    files_modified: Sequence[str] = (),
    payload: dict[str, object] | None = None,
) -> ScoredInteraction:
    """A scored, high-value interaction."""
    interaction = Interaction(
        event_id=event_id,
        source=source,
        event_type="completion",
        key="session-1",
        timestamp=(at or T0) + timedelta(minutes=minutes),
        scorable=True,
        query=query,
        response=response,
        outcome=outcome,
        iterations=1,
        patterns_used=list(patterns_used),
        tools_used=list(tools_used),
        files_modified=list(files_modified),
        payload=payload or {},
    )
    return ScoredInteraction(
        interaction=interaction, score=score, high_value=score is not None and score >= 0.7
    )
