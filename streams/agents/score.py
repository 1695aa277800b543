"""The `score` agent: telemetry topics in, `interactions.scored` / `patterns.candidates` /
`telemetry.dlq` out. Stage logic lives in `scorers.stage`, the watermark in
`scorers.watermark`; this moves data, holds look-up events until the watermark releases them,
and acks each event only once what it produced has been sent.

Offsets: the stream is read with ``noack_take``, so Faust commits an offset only once this
agent acks the event. Acks go through `streams.acks.InOrderAcks`: an event is acked only once
every earlier event of its partition has been (Faust's own check of that has gaps, so it never
sees one). A held event is not acked, so its offset (and every later one of its partition)
stays uncommitted until it is scored: a crash or a rebalance re-reads it. While held (or
finished but waiting for an earlier one) it is out of the consumer's set of unacked messages,
which Faust waits to drain before a rebalance or shutdown (it could not drain while the
partitions are paused); a released one goes back in, so Faust waits for the batch being
scored. On a revocation the held events are dropped (Faust seeks
every partition back to its committed offset after a rebalance, so they come again).

Completeness needs the end offsets of caught-up partitions: asked (ListOffsets) when a held
event waits on a partition that has not delivered a later record, by a client of its own
(`EndOffsets`, librdkafka in a thread of its own). Asking through Faust's consumer
(``consumer.highwaters``) queues behind its fetch long-poll on the same connection (about
1.5 s a call) and, asked every tick, starved the fetches of a backlog: the stream stopped
delivering. The first offset to expect of a partition read nothing from yet is its
committed offset (Faust's ``_committed_offset``), else its earliest offset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from learnstream.core.summary import Summary
from schemas.dlq import DeadLetter
from schemas.errors import one_line
from schemas.headers import json_headers
from schemas.interaction import ScoredInteraction
from schemas.topics import DLQ, INTERACTIONS_SCORED, PATTERNS_CANDIDATES, TELEMETRY
from scorers.stage import Pending, RawRecord, arrival_of, needs_lookup
from scorers.watermark import EventTimeBuffer
from streams.acks import InOrderAcks, OffsetGaps
from streams.agents.outputs import Output, Outputs, dead_letter_outputs

if TYPE_CHECKING:
    import faust

    from learnstream.core.settings import Settings
    from streams.context import StreamContext

log = logging.getLogger("learnstream.score")

Key = tuple[str, int]
QUERY_TIMEOUT_S = 10.0  # one end-offset query; past it the held events wait for the next


def _key(tp: Any) -> Key:
    return (str(tp.topic), int(tp.partition))


def scored_outputs(scored: ScoredInteraction) -> list[Output]:
    """What one scored interaction sends: its `interactions.scored` record and, when it is
    high-value, the same record to `patterns.candidates`; keyed by event id."""
    i = scored.interaction
    key = i.event_id.encode()
    value = scored.model_dump_json().encode()
    headers = json_headers(i.source.value, i.event_type, scored.schema_version)
    out = [Output(INTERACTIONS_SCORED.name, key, value, headers)]
    if scored.high_value:
        out.append(Output(PATTERNS_CANDIDATES.name, key, value, headers))
    return out


def batch_outputs(
    scored: Sequence[ScoredInteraction], dead: Sequence[DeadLetter] = ()
) -> list[Output]:
    """What a scored batch sends: each interaction's records (`scored_outputs`), in order,
    then the dead letters of the records that did not parse."""
    return [o for s in scored for o in scored_outputs(s)] + dead_letter_outputs(dead)


class EndOffsets:
    """Low and high watermarks of partitions, from a librdkafka client of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: Any = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watermark")

    def _query(self, keys: list[Key], earliest: bool) -> dict[Key, int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        from learnstream.core.kafka import client_config

        if self._admin is None:
            self._admin = AdminClient(client_config(self.settings))
        spec = OffsetSpec.earliest() if earliest else OffsetSpec.latest()
        futures = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in keys}, request_timeout=10
        )
        return {
            (tp.topic, tp.partition): int(f.result(QUERY_TIMEOUT_S).offset)
            for tp, f in futures.items()
        }

    async def ask(self, keys: Iterable[Key], *, earliest: bool = False) -> dict[Key, int]:
        """The end (or earliest) offset of each partition, asked now."""
        loop = asyncio.get_running_loop()
        query = loop.run_in_executor(self.executor, self._query, list(keys), earliest)
        return await asyncio.wait_for(query, QUERY_TIMEOUT_S + 5)


class ScoreLoop:
    """One `score` agent instance: the watermark buffer, the batch loop and the ticker."""

    def __init__(self, app: faust.App, ctx: StreamContext, stream: Any, outputs: Outputs) -> None:
        self.app, self.ctx, self.stream = app, ctx, stream
        self.outputs = outputs
        conf = ctx.settings.score
        self.watermark = conf.watermark
        self.buffer: EventTimeBuffer[tuple[Any, Pending]] = EventTimeBuffer(
            conf.watermark_horizon_ms / 1000,
            conf.watermark_margin_ms / 1000,
            conf.watermark_max_hold_ms / 1000,
        )
        self.tick_s = conf.watermark_tick_ms / 1000
        self.lock = asyncio.Lock()
        self.sources = {t.name for t in TELEMETRY.values()}
        self._tps: dict[Key, Any] = {}
        self.metrics = ctx.metrics
        self.offsets = EndOffsets(ctx.settings)
        # Acks in offset order per partition: Faust's commit can pass an unfinished offset.
        self.acks: InOrderAcks[Any] = InOrderAcks()
        self.gaps = OffsetGaps()
        self.summary = Summary(log, "worker", ctx.settings.summary_interval_s)
        self.summary.add(scored=0, high_value=0, dead_letters=0)
        self._ends_warned = -1e9

    # --- Faust's side ------------------------------------------------------------------------

    def _flowing(self) -> bool:
        return bool(self.app.flow_control.is_active())

    def _assign(self) -> None:
        """Wait for the telemetry partitions assigned now."""
        try:
            assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.sources]
        except Exception:  # the consumer is not started yet
            return
        self._tps = {_key(tp): tp for tp in assigned}
        if set(self._tps) != self.buffer.partitions:
            self.acks.drop(self.buffer.partitions - set(self._tps))
            self.buffer.assign(self._tps)

    async def _refresh_ends(self) -> None:
        """Ask for end offsets where that could release the next held event."""
        want = [k for k in self.buffer.waiting_on(time.time()) if k in self._tps]
        if not want:
            return
        unknown: set[Hashable] = set(self.buffer.needs_start())
        committed: Mapping[Any, Any] = getattr(self.app.consumer, "_committed_offset", {})
        earliest_needed = []
        for k in want:
            if k in unknown:
                offset = committed.get(self._tps[k])
                if offset is not None and offset > 0:
                    self.buffer.set_start(k, int(offset))
                else:
                    earliest_needed.append(k)
        if earliest_needed:
            for k, offset in (await self.offsets.ask(earliest_needed, earliest=True)).items():
                self.buffer.set_start(k, offset)
        at = time.time()
        ends = await self.offsets.ask(want)
        self.buffer.observe_ends(ends, at)

    def _warn_ends(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._ends_warned >= 30:
            self._ends_warned = now
            reason = one_line(str(exc) or type(exc).__name__)
            log.warning("asking for end offsets failed (%s); held events wait longer", reason)

    async def on_revoked(self) -> None:
        """A rebalance: forget what is held (it is read again from the committed offsets)."""
        async with self.lock:
            dropped = self.buffer.clear()
            self.acks.clear()
            self.metrics.watermark_held.set(0)
        if dropped:
            log.info("rebalance: %d held events will be read again", len(dropped))

    # --- the work ----------------------------------------------------------------------------

    async def _recover_gaps(self, events: Sequence[Any]) -> None:
        """Score the records Faust skipped before ``events`` (see `streams.acks.OffsetGaps`),
        read on the side, before anything after them is acked."""
        self.gaps.new_generation(self.app.consumer_generation_id)
        committed: Mapping[Any, Any] = getattr(self.app.consumer, "_committed_offset", {})
        skipped: dict[Key, tuple[int, int]] = {}
        for e in events:
            k = _key(e.message.tp)
            if k in skipped:
                continue
            start = self.gaps.observe(k, e.message.offset, committed.get(e.message.tp))
            if start is not None:
                skipped[k] = (start, e.message.offset)
                log.warning(
                    "%s[%d]: offset %d came where %d was due (Faust skipped records around a "
                    "rebalance); scoring %d-%d read on the side",
                    k[0],
                    k[1],
                    e.message.offset,
                    start,
                    start,
                    e.message.offset - 1,
                )
        if not skipped:
            return
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(self.offsets.executor, self._read_range, skipped)
        parsed, dead = await loop.run_in_executor(
            self.ctx.executor, self.ctx.stage.parse_records, records
        )
        self.summary.add(recovered=len(records))
        ready = [Pending(p.interaction, arrival_of(p.record)) for p in parsed]
        scored = await loop.run_in_executor(self.ctx.executor, self._score, ready) if ready else []
        self._count_dead(dead)
        await self.outputs.send_all(batch_outputs(scored, dead))
        self.summary.add(scored=len(scored), high_value=sum(1 for x in scored if x.high_value))

    def _read_range(self, ranges: Mapping[Key, tuple[int, int]]) -> list[RawRecord]:
        """The records ``[start, end)`` of each partition, read with a consumer of its own."""
        from confluent_kafka import Consumer, TopicPartition

        from learnstream.core.kafka import client_config

        consumer = Consumer(
            client_config(
                self.ctx.settings,
                **{"group.id": "learnstream-gap-reader", "enable.auto.commit": False},
            )
        )
        out: list[RawRecord] = []
        try:
            left = dict(ranges)
            consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in left.items()])
            deadline = time.monotonic() + QUERY_TIMEOUT_S
            while left and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                k = (str(msg.topic()), int(msg.partition() or 0))
                offset = int(msg.offset() or 0)
                if k not in left or offset >= left[k][1]:
                    left.pop(k, None)
                    continue
                ts_type, ts = msg.timestamp()
                out.append(
                    RawRecord(
                        k[0],
                        k[1],
                        offset,
                        msg.key(),
                        msg.value() or b"",
                        ts / 1000 if ts_type else None,
                    )
                )
                if offset + 1 >= left[k][1]:
                    left.pop(k)
            if left:
                log.warning("could not read the skipped records of %s in time", sorted(left))
        finally:
            consumer.close()
        return out

    async def on_events(self, events: Sequence[Any]) -> None:
        """One batch from the stream: dead letters out, look-up events held, the rest scored."""
        ctx = self.ctx
        await self._recover_gaps(events)
        records = [
            RawRecord(
                e.message.topic,
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value or b"",
                e.message.timestamp,
            )
            for e in events
        ]
        loop = asyncio.get_running_loop()
        parsed, dead = await loop.run_in_executor(ctx.executor, ctx.stage.parse_records, records)
        async with self.lock:
            self._assign()
            now = time.time()
            for e, rec in zip(events, records, strict=True):
                self.buffer.read(_key(e.message.tp), rec.offset, arrival_of(rec))
                self.acks.begin(_key(e.message.tp), rec.offset, e)
            ready: list[tuple[Any, Pending]] = []
            for p in parsed:
                event = events[p.index]
                pending = Pending(p.interaction, arrival_of(p.record))
                if not (self.watermark and needs_lookup(p.interaction)):
                    ready.append((event, pending))
                    continue
                held = self.buffer.hold(
                    (event, pending),
                    _key(event.message.tp),
                    ts=p.interaction.timestamp.timestamp(),
                    key=p.interaction.event_id,
                    kt=pending.arrival,
                    now=now,
                )
                self.app.consumer.unacked.discard(event.message)
                if held.missed:
                    self.metrics.late_events.labels(p.interaction.source.value, "missed").inc()
            good = {p.index for p in parsed}
            dead_events = [e for i, e in enumerate(events) if i not in good]
            await self._send_dead(dead, dead_events)
            await self._flush(ready)

    def _count_dead(self, dead: Sequence[DeadLetter]) -> None:
        self.summary.add(dead_letters=len(dead))
        if dead:
            self.metrics.dead_letters.labels("score").inc(len(dead))

    async def _send_dead(self, dead: Sequence[DeadLetter], events: Sequence[Any]) -> None:
        self._count_dead(dead)
        await self.outputs.send_all(dead_letter_outputs(dead))
        await self._ack(events)

    async def _ack(self, events: Sequence[Any], also: Iterable[Any] = ()) -> None:
        """Ack ``events`` (finished) in offset order: each once no earlier offset of its
        partition is held; ``also``: events that may be acked now for another reason."""
        now = list(also)
        for event in events:
            now.extend(self.acks.done(_key(event.message.tp), event.message.offset, event))
        generation = self.app.consumer_generation_id
        acked = set()
        for event in now:
            acked.add(id(event))
            # One read before a rebalance is read again (and acked) in the new generation.
            if event.message.generation_id == generation:
                await self.stream.ack(event)
        for event in events:
            if id(event) not in acked:  # waits behind an earlier offset: no rebalance waits on it
                self.app.consumer.unacked.discard(event.message)

    async def _flush(self, ready: list[tuple[Any, Pending]]) -> None:
        """Score ``ready`` and whatever the watermark releases now; send; ack."""
        if self.watermark and len(self.buffer) and self._flowing():
            try:
                await self._refresh_ends()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # the max hold still releases what waits too long
                self._warn_ends(exc)
            generation = self.app.consumer_generation_id
            unblocked: list[Any] = []
            for h in self.buffer.release(time.time()):
                event, pending = h.item
                if event.message.generation_id != generation:
                    # Read before a rebalance: it comes again.
                    msg = event.message
                    unblocked += self.acks.forget(_key(msg.tp), msg.offset, event)
                    continue
                self.app.consumer.unacked.add(event.message)
                # An event without a Kafka timestamp was held as arriving when it was read.
                released = dataclasses.replace(pending, arrival=h.kt, late=h.late, forced=h.forced)
                ready.append((event, released))
                source = pending.interaction.source.value
                self.metrics.watermark_hold_seconds.observe((h.released or 0) - h.received)
                if h.forced:
                    self.metrics.watermark_forced.labels(source).inc()
            if unblocked:
                await self._ack([], unblocked)
        self.metrics.watermark_held.set(len(self.buffer))
        if not ready:
            return
        loop = asyncio.get_running_loop()
        scored = await loop.run_in_executor(self.ctx.executor, self._score, [p for _, p in ready])
        await self.outputs.send_all(batch_outputs(scored))
        await self._ack([event for event, _ in ready])
        self.summary.add(scored=len(scored), high_value=sum(1 for x in scored if x.high_value))

    def _score(self, items: list[Pending]) -> list[ScoredInteraction]:
        scored = self.ctx.stage.score(items)
        # patterns_used feedback updates pattern confidence, on every worker (it comes with the
        # telemetry partitions this one owns, whether or not it runs the extract agent)
        self.ctx.apply_feedback(scored)
        return scored

    async def tick_forever(self) -> None:
        """Release held events as partitions pass, also while no new record comes."""
        while True:
            await asyncio.sleep(self.tick_s)
            self.summary.gauge(
                partitions=len(self._tps), held=len(self.buffer), acks_waiting=self.acks.waiting()
            )
            self.summary.maybe_log()
            if not len(self.buffer):
                continue
            try:
                async with self.lock:
                    self._assign()
                    await self._flush([])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("releasing held events failed; retrying at the next tick")


def register(
    app: faust.App, ctx: StreamContext, *, outputs: Mapping[str, Any] | None = None
) -> Any:
    """Attach the `score` agent to ``app``; ``outputs`` replaces output topics by name (an
    in-process test passes ``app.channel()``s)."""
    source_topics = app.topic(
        *(t.name for t in TELEMETRY.values()),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    sends = Outputs(app, (INTERACTIONS_SCORED.name, PATTERNS_CANDIDATES.name, DLQ.name), outputs)
    score_conf = ctx.settings.score
    current: list[ScoreLoop] = []

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for loop in current:
            await loop.on_revoked()

    app.on_partitions_revoked.connect(on_revoked)

    @app.agent(source_topics, name="score")
    async def score(stream: Any) -> None:
        loop = ScoreLoop(app, ctx, stream, sends)
        current[:] = [loop]
        ticker = asyncio.ensure_future(loop.tick_forever())
        try:
            async for events in stream.noack_take(
                score_conf.batch_size, within=score_conf.batch_within_ms / 1000
            ):
                await loop.on_events(events)
        finally:
            ticker.cancel()

    return score
