"""The `extract` agent: `patterns.candidates` in, `patterns.learned` (and `telemetry.dlq`) out.

Stage logic lives in `extractors.stage`; this only moves data (`parse_candidates` and
`learned_outputs` are what it does with a batch, as pure functions). Extraction runs in its
own thread so slow LLM calls never hold up scoring; replaying candidates changes nothing stored
(the stage recognizes events it already folded into a pattern, and only new or merged
patterns are published).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from schemas.dlq import DeadLetter
from schemas.headers import json_headers
from schemas.interaction import ScoredInteraction
from schemas.topics import DLQ, PATTERNS_CANDIDATES, PATTERNS_LEARNED
from streams.agents.outputs import Output, Outputs, dead_letter_outputs

if TYPE_CHECKING:
    import faust

    from extractors.stage import ExtractionResult
    from streams.context import StreamContext


class Candidate(Protocol):
    """A record read from `patterns.candidates` (a Faust message has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def parse_candidates(
    records: Iterable[Candidate],
) -> tuple[list[ScoredInteraction], list[DeadLetter]]:
    """The candidates of a batch, in order, and a dead letter for each record that is not a
    `ScoredInteraction`."""
    batch: list[ScoredInteraction] = []
    dead: list[DeadLetter] = []
    for m in records:
        try:
            batch.append(ScoredInteraction.model_validate_json(m.value or b""))
        except ValidationError as exc:
            dead.append(
                DeadLetter.from_bytes(
                    m.value or b"",
                    key=m.key,
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    stage="extract",
                    error=f"not a ScoredInteraction: {exc.errors()[0]['msg']}",
                    error_kind="invalid",
                )
            )
    return batch, dead


def learned_outputs(results: Iterable[ExtractionResult]) -> list[Output]:
    """The `patterns.learned` records of a batch's results: one per new or merged pattern
    (duplicates and refusals send nothing), keyed by pattern id."""
    out = []
    for result in results:
        if not result.emit:
            continue
        learned = result.learned
        out.append(
            Output(
                PATTERNS_LEARNED.name,
                learned.pattern.pattern_id.encode(),
                learned.model_dump_json().encode(),
                json_headers("extract", f"pattern_{learned.status}", learned.schema_version),
            )
        )
    return out


def register(
    app: faust.App, ctx: StreamContext, *, outputs: Mapping[str, Any] | None = None
) -> Any:
    """Attach the `extract` agent to ``app``; ``outputs`` replaces output topics by name (an
    in-process test passes ``app.channel()``s)."""
    stage = ctx.extraction
    assert stage is not None
    candidates_topic = app.topic(
        PATTERNS_CANDIDATES.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    sends = Outputs(app, (PATTERNS_LEARNED.name, DLQ.name), outputs)
    conf = ctx.settings.extract

    @app.agent(candidates_topic, name="extract")
    async def extract(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(conf.batch_size, within=conf.batch_within_s):
            batch, dead = parse_candidates(e.message for e in events)
            if dead:
                ctx.metrics.dead_letters.labels("extract").inc(len(dead))
            results = await loop.run_in_executor(ctx.extract_executor, stage.process, batch)
            await sends.send_all([*dead_letter_outputs(dead), *learned_outputs(results)])

    return extract
