"""Each agent in-process with Faust's ``agent.test_context()``: no broker. The real embedding
model and Qdrant (local mode) behind `streams.context.build_context`; the agents' output topics
are in-memory Faust channels (``register(..., outputs=...)``). Rebalances, restarts and
offsets are the subprocess tests' (test_score_worker.py, test_kafka_faults.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import Message
from prometheus_client import CollectorRegistry

from learnstream.core.settings import Settings, load_settings
from schemas.dlq import DeadLetter
from schemas.interaction import ScoredInteraction
from schemas.pattern import LearnedPattern, Pattern
from schemas.topics import (
    DLQ,
    INTERACTIONS_SCORED,
    PATTERNS_CANDIDATES,
    PATTERNS_LEARNED,
    TRAINING_TRIGGERS,
)
from schemas.training import TrainingTrigger
from streams.agents import extract, score, triggers
from streams.context import StreamContext, build_context
from tests.unit.test_extract_support import candidate
from trainers.triggers import ImprovementEvent

pytestmark = pytest.mark.slow

WAIT_S = 60.0  # an output that has not come by then never comes (CPU contention aside)
ANSWER = (
    "Use a session-scoped pytest fixture that starts the consumer, yields it and closes it; "
    "assert on the records it read. " * 3
)


def settings_for(data_dir: Path, **worker: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        kafka={"bootstrap_servers": "127.0.0.1:1"},  # never dialled: nothing is started
        worker=worker,
        score={"watermark": False},
        triggers={"min_dataset_size": 0},
    )


@pytest.fixture(scope="module")
def score_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamContext]:
    """A worker's context with LEARNSTREAM_WORKER__EXTRACT=false."""
    ctx = build_context(
        settings_for(tmp_path_factory.mktemp("score-only"), extract=False), CollectorRegistry()
    )
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamContext]:
    """A worker's context with the extraction stage."""
    ctx = build_context(settings_for(tmp_path_factory.mktemp("full")), CollectorRegistry())
    yield ctx
    ctx.close()


def new_app(name: str) -> faust.App:
    return faust.App(name, broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)


class Outs:
    """In-memory channels standing for output topics, each with a reader."""

    def __init__(self, app: faust.App, *names: str) -> None:
        self.channels = {name: app.channel() for name in names}
        self.readers = {name: c.clone(is_iterator=True) for name, c in self.channels.items()}

    async def take(self, name: str, n: int = 1) -> list[Any]:
        """The next ``n`` events sent to ``name``."""
        return [await self.readers[name].get(timeout=WAIT_S) for _ in range(n)]

    def empty(self, name: str) -> bool:
        return bool(self.readers[name].empty())


async def deliver(
    app: faust.App, agent: Any, topic: str, value: bytes, *, key: bytes | None, offset: int
) -> None:
    """Hand the agent one record as if read from ``topic`` (partition 0) at ``offset``."""
    message = Message(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=time.time(),
        timestamp_type=0,
        headers=[],
        key=key,
        value=value,
        checksum=b"",
        generation_id=app.consumer_generation_id,
    )
    channel = agent.stream().channel
    await channel.put(await channel.decode(message))


def task_completed(event_id: str, query: str, **extra: Any) -> bytes:
    return json.dumps(
        {
            "event": "task_completed",
            "event_id": event_id,
            "task_id": f"task-{event_id}",
            "prompt": query,
            "output": ANSWER,
            "iteration": 1,
            "exit_code": 0,
            "user_feedback": 1,
            "context": {"files_modified": ["a.py", "b.py", "c.py"], "tools_used": ["pytest"]},
            "timestamp": "2026-11-02T09:14:05Z",
            **extra,
        }
    ).encode()


# --- score -----------------------------------------------------------------------------------


def test_score_agent_scores_forwards_high_value_and_dead_letters(
    score_only: StreamContext,
) -> None:
    app = new_app("inproc-score")
    outs = Outs(app, INTERACTIONS_SCORED.name, PATTERNS_CANDIDATES.name, DLQ.name)
    agent = score.register(app, score_only, outputs=outs.channels)

    async def run() -> None:
        async with agent.test_context() as agent_t:
            good = task_completed("inproc-1", "How do I test a Kafka consumer with pytest?")
            await deliver(app, agent_t, "telemetry.ralph", good, key=b"task-inproc-1", offset=0)
            await deliver(app, agent_t, "telemetry.ralph", b"{not json", key=b"k-bad", offset=1)
            [scored] = await outs.take(INTERACTIONS_SCORED.name)
            [letter] = await outs.take(DLQ.name)
            s = ScoredInteraction.model_validate_json(scored.value)
            assert scored.key == b"inproc-1" and s.interaction.event_id == "inproc-1"
            assert dict(scored.headers)["source"] == b"ralph"
            if s.high_value:
                [cand] = await outs.take(PATTERNS_CANDIDATES.name)
                assert cand.value == scored.value
            else:
                assert outs.empty(PATTERNS_CANDIDATES.name)
            dead = DeadLetter.model_validate_json(letter.value)
            assert letter.key == b"k-bad"
            assert (dead.stage, dead.topic, dead.offset, dead.original()) == (
                "score",
                "telemetry.ralph",
                1,
                b"{not json",
            )

    asyncio.run(run())
    registry = score_only.registry
    assert registry.get_sample_value("learnstream_dlq_total", {"stage": "score"}) == 1


def test_pattern_feedback_is_applied_without_the_extract_agent(score_only: StreamContext) -> None:
    """LEARNSTREAM_WORKER__EXTRACT=false: the worker still applies the feedback of the
    telemetry partitions it owns (it used to skip it silently)."""
    assert score_only.extraction is None and score_only.patterns is not None
    pattern = Pattern(
        pattern_id="p-feedback",
        name="Test consumers with a session fixture",
        description="Start the consumer in a pytest fixture and close it after the test.",
    )
    with score_only.stage.vector_lock:
        score_only.patterns.upsert(pattern)
    app = new_app("inproc-feedback")
    outs = Outs(app, INTERACTIONS_SCORED.name, PATTERNS_CANDIDATES.name, DLQ.name)
    agent = score.register(app, score_only, outputs=outs.channels)

    async def run() -> None:
        async with agent.test_context() as agent_t:
            used = task_completed(
                "inproc-fb", "Another question about CSS grids", patterns_used=["p-feedback"]
            )
            await deliver(app, agent_t, "telemetry.ralph", used, key=b"task-fb", offset=0)
            [scored] = await outs.take(INTERACTIONS_SCORED.name)
            assert ScoredInteraction.model_validate_json(scored.value).interaction.patterns_used

    asyncio.run(run())
    with score_only.stage.vector_lock:
        after = score_only.patterns.get("p-feedback")
    assert after is not None
    assert after.usage_count == pattern.usage_count + 1
    assert after.confidence > pattern.confidence


# --- extract ---------------------------------------------------------------------------------


def test_extract_agent_publishes_new_patterns_once_and_dead_letters(full: StreamContext) -> None:
    app = new_app("inproc-extract")
    outs = Outs(app, PATTERNS_LEARNED.name, DLQ.name)
    agent = extract.register(app, full, outputs=outs.channels)
    c = candidate("inproc-cand-1")
    raw = c.model_dump_json().encode()

    async def run() -> None:
        async with agent.test_context() as agent_t:
            await deliver(
                app, agent_t, PATTERNS_CANDIDATES.name, raw, key=b"inproc-cand-1", offset=0
            )
            await deliver(app, agent_t, PATTERNS_CANDIDATES.name, b"[]", key=b"k-bad", offset=1)
            [learned] = await outs.take(PATTERNS_LEARNED.name)
            [letter] = await outs.take(DLQ.name)
            lp = LearnedPattern.model_validate_json(learned.value)
            assert (lp.event_id, lp.status) == ("inproc-cand-1", "new")
            assert learned.key == lp.pattern.pattern_id.encode()
            assert DeadLetter.model_validate_json(letter.value).stage == "extract"
            # The same candidate again (a redelivery) publishes nothing; the next one does.
            await deliver(
                app, agent_t, PATTERNS_CANDIDATES.name, raw, key=b"inproc-cand-1", offset=2
            )
            other = candidate("inproc-cand-2", "How do I rebase a branch onto main with git?")
            await deliver(
                app,
                agent_t,
                PATTERNS_CANDIDATES.name,
                other.model_dump_json().encode(),
                key=None,
                offset=3,
            )
            [after] = await outs.take(PATTERNS_LEARNED.name)
            assert LearnedPattern.model_validate_json(after.value).event_id == "inproc-cand-2"

    asyncio.run(run())


# --- triggers --------------------------------------------------------------------------------


def test_triggers_agent_emits_one_trigger_per_manual_request(score_only: StreamContext) -> None:
    app = new_app("inproc-triggers")
    internal = f"{score_only.settings.worker.app_id}-improvement"
    outs = Outs(app, TRAINING_TRIGGERS.name, internal)
    agent = triggers.register(app, score_only, outputs=outs.channels)
    learned = app.agents["improvement-learned"]
    now = "2026-11-02T09:00:00Z"

    async def run() -> None:
        async with learned.test_context() as forwarder:
            lp = LearnedPattern(
                pattern=Pattern(pattern_id="p1", name="n", description="d"),
                status="new",
                event_id="e1",
            )
            await forwarder.put(value=lp.model_dump_json().encode(), key=b"p1")
            [event] = await outs.take(internal)
            forwarded = ImprovementEvent.model_validate_json(event.value)
            assert (forwarded.kind, forwarded.event_id) == ("learning", "e1/p1")
            assert event.key == score_only.settings.base_model.encode()
        async with agent.test_context() as agent_t:
            request = ImprovementEvent(
                kind="manual", base_model="org/m", at=now, requested_by="test"
            )
            for offset in (0, 1):  # the second finds the first one pending: no trigger
                await deliver(
                    app,
                    agent_t,
                    internal,
                    request.model_dump_json().encode(),
                    key=b"org/m",
                    offset=offset,
                )
            [sent] = await outs.take(TRAINING_TRIGGERS.name)
            trigger = TrainingTrigger.model_validate_json(sent.value)
            assert (sent.key, trigger.base_model, trigger.requested_by) == (
                b"org/m",
                "org/m",
                "test",
            )
            await asyncio.sleep(0.5)
            assert outs.empty(TRAINING_TRIGGERS.name)

    asyncio.run(run())


# --- shutdown --------------------------------------------------------------------------------


def test_close_shuts_the_pools_the_extraction_stage_and_qdrant(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    settings = settings_for(tmp_path)
    ctx = build_context(settings, CollectorRegistry())
    assert ctx.extraction is not None and ctx.extract_executor is not None
    with pytest.raises(RuntimeError, match="already accessed"):
        QdrantClient(path=str(settings.qdrant_path))  # local mode: one client per folder
    ctx.close()
    for pool in (ctx.executor, ctx.extract_executor, ctx.extraction._pool):
        with pytest.raises(RuntimeError, match="shutdown"):
            pool.submit(print)
    assert (
        ctx.extraction.dataset._file is None if hasattr(ctx.extraction.dataset, "_file") else True
    )
    QdrantClient(path=str(settings.qdrant_path)).close()  # the folder is free again
    ctx.close()  # idempotent
