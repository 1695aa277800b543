"""Reading topics back in tests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer


def recent_base_ms() -> int:
    """A whole second an hour ago, in ms: a base for records with chosen timestamps.

    Never a fixed date: Kafka's time-based retention (7 days unless the topic says otherwise)
    deletes older records at its first check, 30 s after the broker starts and every 5 minutes
    after that, so a record stamped in 2023 can vanish in the middle of a test (its low
    watermark jumps to the high one).
    """
    return (int(time.time()) - 3600) * 1000


@dataclass
class Record:
    """A consumed record, decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def json(self) -> Any:
        """The value as JSON."""
        return json.loads(self.value)


def consume(
    bootstrap: str,
    topics: Iterable[str],
    *,
    until: Callable[[list[Record]], bool],
    keep: Callable[[Record], bool] = lambda r: True,
    timeout: float = 30.0,
    settle: float = 0.0,
) -> list[Record]:
    """Read ``topics`` from the beginning with a fresh group until ``until(kept)`` holds.

    After it holds, keeps reading ``settle`` more seconds (to catch duplicates).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # The dev broker completes a rebalance only after (session timeout - 1 s).
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.subscribe(list(topics))
    kept: list[Record] = []
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    try:
        while time.monotonic() < deadline:
            if done_at is not None and time.monotonic() >= done_at:
                break
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            rec = Record(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.key(),
                msg.value() or b"",
                {k: v for k, v in (msg.headers() or [])},
            )
            if keep(rec):
                kept.append(rec)
            if done_at is None and until(kept):
                done_at = time.monotonic() + settle
    finally:
        consumer.close()
    return kept
