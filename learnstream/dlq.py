"""Reading ``telemetry.dlq`` and re-publishing dead letters after a fix (``learnstream dlq``).

Dead letters are read from the start of every partition up to its end offset at the time of
the call, with partitions assigned directly (no consumer group, nothing committed). A letter
keeps its original bytes (base64) and key, so re-publishing sends them to the topic they came
from (their ``topic`` field, else ``telemetry.<source>``), where they are validated again.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.dlq import DeadLetter
from schemas.topics import DLQ, telemetry_topic


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it sits in ``telemetry.dlq``."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def position(self) -> str:
        """``partition:offset``, as `learnstream dlq show` takes it."""
        return f"{self.partition}:{self.offset}"


def read_letters(conf: dict[str, Any], timeout: float = 10.0) -> list[Letter]:
    """Every dead letter now in ``telemetry.dlq`` (records that are not one are skipped)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": "learnstream-dlq-reader", "enable.auto.commit": False})
    out: list[Letter] = []
    try:
        topic = consumer.list_topics(DLQ.name, timeout=timeout).topics.get(DLQ.name)
        if topic is None or topic.error is not None:
            return []
        ends: dict[int, int] = {}
        assign = []
        for pid in sorted(topic.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(DLQ.name, pid), timeout=timeout
            )
            if high > low:
                ends[pid] = high
                assign.append(TopicPartition(DLQ.name, pid, low))
        if not assign:
            return []
        consumer.assign(assign)
        deadline = time.monotonic() + max(timeout, 5.0) * 3
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            pid, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            with contextlib.suppress(ValidationError):
                out.append(Letter(pid, offset, DeadLetter.model_validate_json(msg.value() or b"")))
            if offset + 1 >= ends.get(pid, 0):
                ends.pop(pid, None)
    finally:
        consumer.close()
    return sorted(out, key=lambda x: (x.letter.failed_at, x.partition, x.offset))


def select(
    letters: Iterable[Letter],
    *,
    source: str | None = None,
    kind: str | None = None,
    stage: str | None = None,
    positions: Iterable[str] = (),
) -> list[Letter]:
    """The letters matching every given filter (positions: ``partition:offset``)."""
    wanted = set(positions)
    return [
        x
        for x in letters
        if (source is None or x.letter.source == source)
        and (kind is None or x.letter.error_kind == kind)
        and (stage is None or x.letter.stage == stage)
        and (not wanted or x.position in wanted)
    ]


def counts(letters: Iterable[Letter]) -> Counter[tuple[str, str, str]]:
    """How many letters per (source, stage, error kind)."""
    return Counter((x.letter.source or "-", x.letter.stage, x.letter.error_kind) for x in letters)


def target_topic(letter: DeadLetter) -> str | None:
    """The topic a letter's original goes back to: its own, else its source's."""
    if letter.topic and letter.topic != DLQ.name:
        return letter.topic
    if letter.source:
        try:
            return telemetry_topic(letter.source)
        except ValueError:
            return None
    return None


def republish(
    producer_conf: dict[str, Any],
    letters: Iterable[Letter],
    *,
    timeout: float = 30.0,
    on_skip: Callable[[Letter, str], None] = lambda _letter, _why: None,
) -> int:
    """Send each letter's original bytes and key back to its topic; returns how many were
    acknowledged (a truncated original, or one with nowhere to go, is skipped).

    ``producer_conf``: `learnstream.core.kafka.reliable_producer_config` (acks=all, idempotent).
    """
    from confluent_kafka import Producer

    producer = Producer(producer_conf)
    sent: list[int] = []
    for x in letters:
        letter = x.letter
        topic = target_topic(letter)
        raw = letter.original()
        if topic is None:
            on_skip(x, "no topic and no source to send it back to")
            continue
        if letter.original_size is not None and letter.original_size > len(raw):
            on_skip(x, f"only the first {len(raw)} of {letter.original_size} bytes were kept")
            continue
        key = base64.b64decode(letter.original_key_b64) if letter.original_key_b64 else None
        producer.produce(
            topic,
            raw,
            key,
            headers=[("republished_from", x.position.encode())],
            on_delivery=lambda err, _msg: sent.append(0) if err is None else None,
        )
        producer.poll(0)
    left = producer.flush(timeout)
    if left:
        raise TimeoutError(f"{left} records not acknowledged within {timeout:g} s")
    return len(sent)
