"""The `score` agent: telemetry topics in, `interactions.scored` / `patterns.candidates` /
`telemetry.dlq` out. Stage logic lives in `scorers.stage`; this only moves data."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

from schemas.topics import DLQ, INTERACTIONS_SCORED, PATTERNS_CANDIDATES, TELEMETRY
from scorers.stage import BatchResult, RawRecord

if TYPE_CHECKING:
    import faust

    from streams.app import StreamContext

JSON = b"application/json"


def register(app: faust.App, ctx: StreamContext) -> Any:
    """Attach the `score` agent to ``app``."""
    source_topics = app.topic(
        *(t.name for t in TELEMETRY.values()),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    scored_topic = app.topic(INTERACTIONS_SCORED.name, key_serializer="raw", value_serializer="raw")
    candidates_topic = app.topic(
        PATTERNS_CANDIDATES.name, key_serializer="raw", value_serializer="raw"
    )
    dlq_topic = app.topic(DLQ.name, key_serializer="raw", value_serializer="raw")
    score_conf = ctx.settings.score
    extraction = ctx.extraction

    def process(records: list[RawRecord]) -> BatchResult:
        result = ctx.stage.process(records)
        if extraction is not None:  # patterns_used feedback updates the patterns' confidence
            extraction.apply_feedback(result.scored)
        return result

    @app.agent(source_topics, name="score")
    async def score(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(
            score_conf.batch_size, within=score_conf.batch_within_ms / 1000
        ):
            records = [
                RawRecord(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value or b"",
                )
                for e in events
            ]
            result = await loop.run_in_executor(ctx.executor, process, records)
            sends = []
            for scored in result.scored:
                i = scored.interaction
                key = i.event_id.encode()
                value = scored.model_dump_json().encode()
                headers = [
                    ("source", i.source.value.encode()),
                    ("event_type", i.event_type.encode()),
                    ("schema_version", str(scored.schema_version).encode()),
                    ("content-type", JSON),
                ]
                sends.append(scored_topic.send(key=key, value=value, headers=headers))
                if scored.high_value:
                    sends.append(candidates_topic.send(key=key, value=value, headers=headers))
            for letter in result.dead:
                ctx.metrics.dead_letters.labels("score").inc()
                dlq_key = (
                    base64.b64decode(letter.original_key_b64) if letter.original_key_b64 else None
                )
                sends.append(
                    dlq_topic.send(
                        key=dlq_key,
                        value=letter.model_dump_json().encode(),
                        headers=[
                            ("source", (letter.source or "").encode()),
                            ("event_type", b"dead_letter"),
                            ("content-type", JSON),
                        ],
                    )
                )
            await asyncio.gather(*sends)

    return score
