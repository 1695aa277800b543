"""The `extract` agent: `patterns.candidates` in, `patterns.learned` (and `telemetry.dlq`) out.

Stage logic lives in `extractors.stage`; this only moves data. Extraction runs in its own
thread so slow LLM calls never hold up scoring; replaying candidates changes nothing stored
(the stage recognizes events it already folded into a pattern, and only new or merged
patterns are published).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from schemas.dlq import DeadLetter
from schemas.headers import dead_letter_headers, json_headers
from schemas.interaction import ScoredInteraction
from schemas.topics import DLQ, PATTERNS_CANDIDATES, PATTERNS_LEARNED

if TYPE_CHECKING:
    import faust

    from streams.app import StreamContext


def register(app: faust.App, ctx: StreamContext) -> Any:
    """Attach the `extract` agent to ``app``."""
    stage = ctx.extraction
    assert stage is not None
    candidates_topic = app.topic(
        PATTERNS_CANDIDATES.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    learned_topic = app.topic(PATTERNS_LEARNED.name, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(DLQ.name, key_serializer="raw", value_serializer="raw")
    conf = ctx.settings.extract

    @app.agent(candidates_topic, name="extract")
    async def extract(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(conf.batch_size, within=conf.batch_within_s):
            batch: list[ScoredInteraction] = []
            sends = []
            for e in events:
                m = e.message
                try:
                    batch.append(ScoredInteraction.model_validate_json(m.value or b""))
                except ValidationError as exc:
                    ctx.metrics.dead_letters.labels("extract").inc()
                    letter = DeadLetter.from_bytes(
                        m.value or b"",
                        key=m.key,
                        topic=m.topic,
                        partition=m.partition,
                        offset=m.offset,
                        stage="extract",
                        error=f"not a ScoredInteraction: {exc.errors()[0]['msg']}",
                        error_kind="invalid",
                    )
                    sends.append(
                        dlq_topic.send(
                            key=m.key,
                            value=letter.model_dump_json().encode(),
                            headers=dead_letter_headers(letter),
                        )
                    )
            results = await loop.run_in_executor(ctx.extract_executor, stage.process, batch)
            for result in results:
                if not result.emit:
                    continue
                learned = result.learned
                sends.append(
                    learned_topic.send(
                        key=learned.pattern.pattern_id.encode(),
                        value=learned.model_dump_json().encode(),
                        headers=json_headers(
                            "extract", f"pattern_{learned.status}", learned.schema_version
                        ),
                    )
                )
            await asyncio.gather(*sends)

    return extract
