"""What an agent sends, as data: each agent's pure functions return `Output` records, and
`Outputs` sends them to the topics (or, in a test, to in-memory Faust channels)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.dlq import DeadLetter
from schemas.headers import Headers, dead_letter_headers
from schemas.topics import DLQ


@dataclass(frozen=True)
class Output:
    """One record to send: its topic's name, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None


def dead_letter_outputs(letters: Iterable[DeadLetter]) -> list[Output]:
    """The `telemetry.dlq` records of ``letters``, keyed by the original record's key."""
    return [
        Output(
            DLQ.name,
            base64.b64decode(letter.original_key_b64) if letter.original_key_b64 else None,
            letter.model_dump_json().encode(),
            dead_letter_headers(letter),
        )
        for letter in letters
    ]


class Outputs:
    """The channels an agent sends to, by topic name: raw Faust topics of the app, unless
    ``override`` names a channel for a topic (in-process tests pass ``app.channel()``s)."""

    def __init__(self, app: Any, names: Sequence[str], override: Mapping[str, Any] | None) -> None:
        override = override or {}
        self.channels: dict[str, Any] = {
            name: override[name]
            if name in override
            else app.topic(name, key_serializer="raw", value_serializer="raw")
            for name in names
        }

    def send(self, output: Output) -> Any:
        """The send of one output (a coroutine)."""
        return self.channels[output.topic].send(
            key=output.key, value=output.value, headers=output.headers
        )

    async def send_all(self, outputs: Iterable[Output]) -> None:
        """Send ``outputs`` concurrently; returns once each was sent (delivered to Faust's
        producer, which a stream's ack waits on before its offset is committed)."""
        await asyncio.gather(*(self.send(o) for o in outputs))
