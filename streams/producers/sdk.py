"""The producer SDK: `TelemetryProducer.emit` for tools, built on confluent-kafka.

`emit` only assigns the event id and enqueues; one background worker validates, produces,
handles delivery reports, and spools to disk when the broker is down or slow:

- DIRECT: records go to librdkafka. A failed delivery (timeout, broker down, local queue full)
  switches to SPOOLING: not-yet-sent messages are purged back, in-flight ones are awaited, and
  all failures are written to the spool in emit order.
- SPOOLING: new records are appended to the spool; the worker resends the spool in order with
  backoff, and returns to DIRECT once it is empty. A spool left by an earlier run is resent first.

Delivery is at-least-once: a message in flight when the broker stalled may have been written
and is then sent again (counted by ``learnstream_producer_possibly_duplicated``); every sink
downstream dedupes by ``event_id``. Events are durable once `flush` returns.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import reprlib
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, cast

import pydantic_core
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from learnstream.core.kafka import client_config
from learnstream.core.settings import Settings
from schemas.base import SCHEMA_VERSION, Source, SourceEvent
from schemas.dlq import DeadLetter
from schemas.errors import EventError
from schemas.events import EVENT_MODELS
from schemas.headers import dead_letter_headers, json_headers
from schemas.parsing import check_structure, parse_event, parse_source, validate_event
from schemas.redact import redact_json
from schemas.topics import DLQ, telemetry_topic
from streams.producers.metrics import ProducerMetrics
from streams.producers.spool import Spool, SpoolRecord

log = logging.getLogger("learnstream.producer")

_RESEND_BATCH = 5000
_MAX_BACKOFF_S = 30.0


@dataclass(slots=True)
class _Route:
    """What the hot path needs per source, looked up once (enum hashing runs Python code)."""

    source: Source
    name: str
    topic: str
    models: Mapping[str, type[SourceEvent]]
    emitted: Any  # the source's emitted counter
    headers: dict[tuple[str, int], list[tuple[str, bytes]]] = field(default_factory=dict)


@dataclass(slots=True)
class _Event:
    payload: SourceEvent | Mapping[str, Any]
    route: _Route
    event_id: str

    @property
    def source(self) -> Source:
        return self.route.source


@dataclass
class _Dead:
    raw: bytes
    source: str | None
    reason: str
    fields: dict[str, Any]


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)
    pending: int = 0


_STOP = object()


def _memory_size(rec: SpoolRecord) -> int:
    return len(rec.value) + len(rec.key or b"") + 200


def _record_result(results: dict[int, Any], seq: int, err: Any, msg: Any) -> None:
    results[seq] = err


class EventIds:
    """UUIDv4-shaped ids from a random per-producer prefix and a counter.

    ``uuid.uuid4()`` costs a syscall per call, which also hands the GIL to the worker thread
    mid-``emit``; this costs neither. 60 random bits keep producers apart, the 60-bit counter
    keeps one producer's ids apart.
    """

    def __init__(self) -> None:
        p = os.urandom(8).hex()
        self._head = f"{p[:8]}-{p[8:12]}-4{p[13:16]}-a"
        self._counter = itertools.count()

    def __call__(self) -> str:
        n = f"{next(self._counter):015x}"
        return f"{self._head}{n[:3]}-{n[3:]}"


def raw_of(payload: object) -> bytes:
    """The bytes a dead letter keeps of an object that is not bytes: its JSON when it has
    one, else a bounded repr; never raises, whatever the depth, size or text of the input.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    try:
        data = payload.model_dump(mode="json") if isinstance(payload, SourceEvent) else payload
        return json.dumps(data, default=str).encode()  # ensure_ascii: surrogates are escaped
    except (RecursionError, ValueError, TypeError):
        short = reprlib.Repr()
        short.maxlevel, short.maxstring, short.maxother = 8, 2000, 200
        short.maxdict = short.maxlist = 200
        return short.repr(payload).encode("utf-8", "backslashreplace")


def _serialized(dump: Callable[[], bytes], source: str, event_type: str) -> bytes:
    """``dump()``, with a failure to serialize turned into the `EventError` it is."""
    try:
        return dump()
    except (RecursionError, ValueError, TypeError) as exc:  # PydanticSerializationError too
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise EventError(
            f"{source}.{event_type}: cannot be serialized to JSON: {reason}",
            source=source,
            event_type=event_type,
            kind="unserializable",
        ) from None


def record_headers(event: SourceEvent) -> list[tuple[str, bytes]]:
    """The headers every telemetry record carries."""
    return json_headers(
        event.SOURCE.value, event.event_type, event.schema_version, event_id=event.event_id or ""
    )


class TelemetryProducer:
    """Publishes tool events to their telemetry topics without blocking and without loss.

    >>> with TelemetryProducer(source="ralph", settings=load_settings()) as producer:
    ...     producer.emit({"event": "task_submitted", "task_id": "t1", "prompt": "...",
    ...                    "timestamp": "2026-11-02T09:14:05Z"})

    ``source`` is the default for `emit`; a producer may also emit for several sources.
    ``name`` names the spool (one process per name). Invalid events are dead-lettered to
    ``telemetry.dlq`` with the reason and logged; they never raise from `emit`.
    """

    def __init__(
        self,
        source: Source | str | None = None,
        settings: Settings | None = None,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        config: Mapping[str, Any] | None = None,
        stage: str = "sdk",
    ) -> None:
        from confluent_kafka import Producer

        from learnstream.core.settings import load_settings

        self.settings = settings or load_settings()
        self.source = parse_source(str(source)) if source is not None else None
        self.stage = stage
        self.name = name or (f"{stage}-{self.source.value}" if self.source else stage)
        self.metrics = ProducerMetrics.on(registry)
        ps = self.settings.producer
        self._timeout_s = ps.delivery_timeout_ms / 1000
        self._max_event_bytes = self.settings.max_event_bytes
        self._max_event_depth = self.settings.max_event_depth
        self._redact = ps.redact
        conf = client_config(
            self.settings,
            **{
                "enable.idempotence": ps.idempotence,
                "linger.ms": ps.linger_ms,
                "message.timeout.ms": ps.delivery_timeout_ms,
                "compression.type": ps.compression,
                # Room for the largest accepted event, and for its dead letter (base64).
                "message.max.bytes": max(1_000_000, self.settings.max_event_bytes * 2 + 65_536),
            },
        )
        # librdkafka's own lines (a FAIL per reconnect while the broker is away) go through
        # logging; CLI commands show them only at LEARNSTREAM_LOG_LEVEL=DEBUG.
        conf.setdefault("logger", logging.getLogger("learnstream.librdkafka"))
        conf.update(config or {})
        self._producer = Producer(conf)
        self._spool = Spool(self.settings.spool_dir / self.name, ps.spool_max_bytes)
        # Records the spool's disk refused: resent from here, spooled once the disk has room.
        self._memory: deque[SpoolRecord] = deque()
        self._memory_bytes = 0
        self._memory_max = ps.memory_max_bytes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._failed: list[tuple[SpoolRecord, bool]] = []  # (record, maybe sent)
        self._seq = time.time_ns()
        self._spooling = len(self._spool) > 0
        self._backoff = 0.0
        self._next_resend = 0.0
        self._resent_ok: set[int] = set()
        self._closed = False
        self._outstanding = 0  # records handed to librdkafka without a delivery report yet
        self._put_lock = threading.Lock()
        self._puts = 0  # events and dead letters queued (callers' side, under _put_lock)
        self._handled = 0  # of them, taken by the worker (its side only)
        self._new_id = EventIds()
        self._routes = {
            s: _Route(
                s, s.value, telemetry_topic(s), EVENT_MODELS[s], self.metrics.emitted.labels(s)
            )
            for s in Source
        }
        self._default_route = self._routes[self.source] if self.source else None
        self._topic_sources = {r.topic: r.name for r in self._routes.values()}
        self._delivered_counts: dict[str, int] = {}
        if self._spooling:
            log.info(
                "%s: %d spooled events from an earlier run are resent first",
                self.name,
                len(self._spool),
            )
        self._update_spool_gauges()
        self._worker = threading.Thread(target=self._run, name=f"producer-{self.name}", daemon=True)
        self._worker.start()

    # --- caller side ---------------------------------------------------------------------

    def emit(
        self, event: SourceEvent | Mapping[str, Any], *, source: Source | str | None = None
    ) -> str:
        """Queue one event (a pydantic model or a dict) and return its event id; never blocks.

        The id is the event's own ``event_id`` if it has one, else a new UUID, kept through
        retries and the spool.
        """
        if self._closed:
            raise RuntimeError("emit() on a closed TelemetryProducer")
        if type(event) is not dict and isinstance(event, SourceEvent):
            route = self._routes[event.SOURCE]
            event_id = event.event_id or self._new_id()
        elif not isinstance(event, Mapping):
            event_id = self._new_id()
            src = source if source is not None else self.source
            self.dead_letter(
                raw_of(event),
                f"an event must be a dict (a JSON object) or a SourceEvent, not "
                f"{type(event).__name__}",
                source=src,
                event_id=event_id,
                error_kind="malformed",
            )
            return event_id
        else:
            default = self._default_route
            route = (
                default
                if source is None and default is not None
                else self._routes[self._source_for(source)]
            )
            event_id = event.get("event_id") or self._new_id()
        event_id = event_id if type(event_id) is str else str(event_id)
        route.emitted.inc()
        with self._put_lock:
            self._puts += 1
        self._queue.put(_Event(event, route, event_id))
        return event_id

    def dead_letter(
        self, raw: bytes | str, reason: str, *, source: Source | str | None = None, **fields: Any
    ) -> None:
        """Send input that could not be accepted to ``telemetry.dlq`` with the reason."""
        raw_b = raw.encode() if isinstance(raw, str) else raw
        src = str(source) if source is not None else (self.source.value if self.source else None)
        with self._put_lock:
            self._puts += 1
        self._queue.put(_Dead(raw_b, src, reason, fields))

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued event is delivered or durably spooled.

        Returns how many are still neither (0 means all are safe).
        """
        marker = _Flush()
        self._queue.put(marker)
        if not marker.done.wait(timeout):
            return self._unhandled + self._outstanding
        return marker.pending

    @property
    def _unhandled(self) -> int:
        """Events and dead letters queued by callers and not yet sent or spooled."""
        return max(0, self._puts - self._handled)

    def drain(self, timeout: float) -> int:
        """Flush, then keep resending the spool until it is empty or ``timeout`` passes.

        Returns how many events are not delivered yet (0: every event reached the broker).
        Use it before exiting when a short broker outage (a leader election, a restart)
        should not leave events behind in the spool for the next run.
        """
        deadline = time.monotonic() + timeout
        self._next_resend = 0.0  # resend now rather than after the current backoff
        while True:
            pending = self.flush(max(0.0, deadline - time.monotonic()))
            left = pending + self.spooled
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self, timeout: float | None = None) -> None:
        """Flush, spool whatever is still undelivered, and stop the worker."""
        if self._closed:
            return
        if self.flush(timeout if timeout is not None else self._timeout_s + 5):
            # Still waiting on the broker: take the records back from librdkafka (its reports
            # say "purged", so they are spooled) rather than wait out the delivery timeout.
            self._producer.purge(in_queue=True, in_flight=True)
        self._closed = True
        self._queue.put(_STOP)
        self._worker.join()

    def __enter__(self) -> TelemetryProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def spooled(self) -> int:
        """Events waiting to be resent: in the on-disk spool (or in memory, its disk full)."""
        return len(self._spool) + len(self._memory)

    @property
    def spooling(self) -> bool:
        """True while the broker is considered unavailable."""
        return self._spooling

    def _source_for(self, source: Source | str | None) -> Source:
        if source is not None:
            return parse_source(str(source))
        if self.source is None:
            raise ValueError("emit() of a dict needs a source: TelemetryProducer(source=...)")
        return self.source

    # --- worker side ---------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                batch = [self._queue.get(timeout=0.05)]
            except queue.Empty:
                batch = []
            while len(batch) < 2000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                try:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, _Flush):
                        self._do_flush(item)
                    elif isinstance(item, _Event):
                        self._handle_event(item)
                    elif isinstance(item, _Dead):
                        self._send(
                            self._dlq_record(item.raw, item.source, item.reason, item.fields)
                        )
                except Exception:  # the worker must survive anything one record does
                    log.exception(
                        "%s: unexpected error handling a %s (event %s)",
                        self.name,
                        type(item).__name__,
                        getattr(item, "event_id", "-"),
                    )
                finally:
                    if isinstance(item, _Event | _Dead):
                        self._handled += 1
            self._producer.poll(0)
            self._settle_failures()
            if self._spooling and not stop:
                self._maybe_resend()
            if batch:
                self._spool.sync()
            self._update_spool_gauges()
            self._publish_counts()
        self._shutdown()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _handle_event(self, item: _Event) -> None:
        payload = item.payload
        value = b""
        decoded: dict[str, Any] | None = None  # the tool's own dict, when it sent one
        try:
            if type(payload) is not dict and isinstance(payload, SourceEvent):
                event = payload
                if event.event_id != item.event_id:
                    event = event.model_copy(update={"event_id": item.event_id})
                value = _serialized(event.to_wire, item.source.value, event.event_type)
                if b"\\u0000" in value:  # a NUL, or text that looks like one: check
                    check_structure(json.loads(value), source=item.source.value)
            else:
                data = decoded = dict(payload)
                data["event_id"] = item.event_id
                event = self._validate(item.route, data)
                # The tool's own event (plus its id), as sent; it has just been validated.
                try:
                    value = pydantic_core.to_json(data)
                except (RecursionError, ValueError, TypeError):
                    check_structure(data, source=item.source.value)  # names a bad string
                    value = _serialized(
                        lambda: pydantic_core.to_json(data), item.source.value, event.event_type
                    )
                if b"\\u0000" in value:  # a NUL, or text that looks like one: check
                    check_structure(data, source=item.source.value)
            if self._redact:
                found: Counter[str] = Counter()
                value = redact_json(value, found, decoded=decoded)
                for kind, n in found.items():
                    self.metrics.secrets_redacted.labels(item.source.value, kind).inc(n)
            limit = self._max_event_bytes
            if len(value) > limit:
                raise EventError(
                    f"event is {len(value)} bytes, over the limit of {limit} bytes "
                    "(LEARNSTREAM_MAX_EVENT_BYTES)",
                    source=item.source.value,
                    event_type=event.event_type,
                    kind="oversized",
                )
        except EventError as exc:
            raw = value if exc.kind == "oversized" else raw_of(payload)
            log.warning("%s: invalid %s event dead-lettered: %s", self.name, item.source, exc)
            self._send(
                self._dlq_record(
                    raw,
                    item.source.value,
                    exc.reason,
                    {
                        "event_type": exc.event_type,
                        "error_kind": exc.kind,
                        "event_id": item.event_id,
                    },
                )
            )
            return
        route = item.route
        header_key = (event.event_type, event.schema_version)
        static = route.headers.get(header_key)
        if static is None:
            static = route.headers.setdefault(header_key, record_headers(event)[:-1])
        self._send_parts(
            route.topic,
            value,
            event.record_key().encode(),
            [*static, ("event_id", item.event_id.encode())],
            event_id=item.event_id,
            source=route.name,
        )

    def _validate(self, route: _Route, data: dict[str, Any]) -> SourceEvent:
        """`validate_event` with a fast path for the common case of a valid event."""
        # Depth here; the text (NUL, lone surrogates) on the serialized JSON (`_handle_event`).
        check_structure(data, max_depth=self._max_event_depth, source=route.name, text=False)
        event_type = data.get("event_type") or data.get("event")
        model = route.models.get(event_type) if type(event_type) is str else None
        if model is not None:
            try:
                return model.__pydantic_validator__.validate_python(data)
            except ValidationError:
                pass  # validate_event below raises with the full, clear reason
        return validate_event(route.source, data, max_depth=self._max_event_depth)

    def _dlq_record(
        self, raw: bytes, source: str | None, reason: str, fields: dict[str, Any]
    ) -> SpoolRecord:
        fields = {k: v for k, v in fields.items() if v is not None}
        fields.setdefault("stage", self.stage)
        letter = DeadLetter.from_bytes(raw, source=source, error=reason, **fields)
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, letter.original_b64 + reason))
        self.metrics.dead_lettered.labels(source or "unknown", str(fields["stage"])).inc()
        return SpoolRecord(
            topic=DLQ.name,
            value=letter.model_dump_json().encode(),
            key=event_id.encode(),
            headers=dead_letter_headers(letter),
            event_id=event_id,
            seq=self._next_seq(),
            source=source or "",
        )

    def _send(self, rec: SpoolRecord) -> None:
        self._send_parts(
            rec.topic, rec.value, rec.key, rec.headers, event_id=rec.event_id, source=rec.source
        )

    def _send_parts(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        event_id: str,
        source: str,
    ) -> None:
        """Produce one record, or spool it; librdkafka holds only its ``seq`` (emit order)."""
        self._seq += 1
        if self._spooling:
            self._to_spool(SpoolRecord(topic, value, key, headers, event_id, self._seq, source))
            return
        try:
            # A dead letter's source is in no field of its report; it travels with it (rare).
            report = (
                partial(self._on_delivery, self._seq)
                if topic in self._topic_sources
                else partial(self._on_dead_letter_delivery, self._seq, source)
            )
            self._producer.produce(
                topic,
                value,
                key,
                headers=headers,  # type: ignore[arg-type]
                on_delivery=report,
            )
            self._outstanding += 1
        except BufferError:  # local queue full: the broker is slow
            rec = SpoolRecord(topic, value, key, headers, event_id, self._seq, source)
            self._failed.append((rec, False))
            self._settle_failures()
        except KafkaException as exc:  # refused locally, e.g. larger than message.max.bytes
            rec = SpoolRecord(topic, value, key, headers, event_id, self._seq, source)
            self._refused(rec, str(exc.args[0].str() if exc.args else exc))

    def _produce(self, rec: SpoolRecord, on_delivery: Callable[[Any, Any], None]) -> None:
        headers = cast(list[tuple[str, str | bytes | None]], rec.headers)
        self._producer.produce(
            rec.topic, value=rec.value, key=rec.key, headers=headers, on_delivery=on_delivery
        )

    def _record_of(self, msg: Any, seq: int) -> SpoolRecord:
        """The record a failed delivery report is about, rebuilt from the message.

        Only the emit order (``seq``) travels with a record through librdkafka: holding the
        whole record per message (allocations, garbage collection) took sustained throughput
        from about 57k down to 47k events/s (`bench/bench_emit.py`). Reports carry no headers,
        so they are derived again from the value, exactly as they were made.
        """
        topic, value, key = msg.topic(), msg.value(), msg.key()
        source = self._topic_sources.get(topic)
        if source is None:
            letter = DeadLetter.model_validate_json(value)  # made by `_dlq_record`
            headers = dead_letter_headers(letter)
            return SpoolRecord(topic, value, key, headers, key.decode(), seq, letter.source or "")
        try:
            event = parse_event(source, value, max_bytes=None)
            headers = record_headers(event)
        except EventError:  # a model instance of a type the schemas do not list
            data = json.loads(value)
            event_type = data.get("event_type") or data.get("event") or ""
            version = data.get("schema_version", SCHEMA_VERSION)
            headers = json_headers(
                source, str(event_type), version, event_id=str(data.get("event_id") or "")
            )
        return SpoolRecord(topic, value, key, headers, headers[-1][1].decode(), seq, source)

    def _on_dead_letter_delivery(self, seq: int, source: str, err: Any, msg: Any) -> None:
        if err is None:  # counted under its event's source
            self._outstanding -= 1
            self._delivered_counts[source] = self._delivered_counts.get(source, 0) + 1
            return
        self._on_delivery(seq, err, msg)

    def _on_delivery(self, seq: int, err: Any, msg: Any) -> None:
        self._outstanding -= 1
        if err is None:
            source = self._topic_sources[msg.topic()]
            self._delivered_counts[source] = self._delivered_counts.get(source, 0) + 1
            return
        from confluent_kafka import KafkaError

        rec = self._record_of(msg, seq)
        code = err.code()
        if (
            code == KafkaError._PURGE_QUEUE
            or err.retriable()
            or code
            in (
                KafkaError._MSG_TIMED_OUT,
                KafkaError._PURGE_INFLIGHT,
                KafkaError._TRANSPORT,
                KafkaError._ALL_BROKERS_DOWN,
                KafkaError._TIMED_OUT,
            )
        ):
            # Only messages purged from the local queue are known never to have been sent.
            self._failed.append((rec, code != KafkaError._PURGE_QUEUE))
            return
        self.metrics.failed.labels(rec.source or "unknown", err.name()).inc()
        self._refused(rec, f"rejected by the broker: {err.str()}")

    def _refused(self, rec: SpoolRecord, reason: str) -> None:
        """A record Kafka will not take: dead-letter it (its head, if huge) and say so."""
        log.error("%s: %s record %s refused: %s", self.name, rec.topic, rec.event_id, reason)
        if rec.topic == DLQ.name:
            self.metrics.failed.labels(rec.source or "unknown", "dead_letter_refused").inc()
            return
        self._send(
            self._dlq_record(
                rec.value,
                rec.source or None,
                reason,
                {"topic": rec.topic, "error_kind": "rejected", "event_id": rec.event_id},
            )
        )

    def _settle_failures(self) -> None:
        """On the first failure, switch to spooling and spool every failure in emit order."""
        if not self._failed:
            return
        if not self._spooling:
            self._spooling = True
            log.warning(
                "%s: broker unavailable or slow; spooling to %s", self.name, self._spool.directory
            )
            self._producer.purge(in_queue=True, in_flight=False)
            self._producer.flush(self._timeout_s + 1)  # await in-flight results
            self._next_resend = time.monotonic() + 1.0
            self._backoff = 1.0
        failed, self._failed = self._failed, []
        for rec, maybe_sent in sorted(failed, key=lambda f: f[0].seq):
            if maybe_sent:
                self.metrics.possibly_duplicated.labels(rec.source or "unknown").inc()
            self._to_spool(rec)

    def _to_spool(self, rec: SpoolRecord) -> None:
        if not self._memory and self._spool.append(rec):
            self.metrics.spooled.labels(rec.source or "unknown").inc()
            return
        size = _memory_size(rec)
        if self._spool.disk_refused and self._memory_bytes + size <= self._memory_max:
            if not self._memory:  # an error: these events are lost if the process dies
                log.error(
                    "%s: %s; events wait in memory (up to %d bytes, "
                    "LEARNSTREAM_PRODUCER__MEMORY_MAX_BYTES) until they are sent or spooled",
                    self.name,
                    self._spool.last_error,
                    self._memory_max,
                )
            self._memory.append(rec)
            self._memory_bytes += size
            self.metrics.spooled.labels(rec.source or "unknown").inc()
            return
        self.metrics.spool_rejected.labels(rec.source or "unknown").inc()
        log.error(
            "%s: spool full: %s (LEARNSTREAM_PRODUCER__SPOOL_MAX_BYTES, __MEMORY_MAX_BYTES); "
            "keeping the oldest events, event %s to %s was NOT kept",
            self.name,
            self._spool.last_error or "the spool is full",
            rec.event_id,
            rec.topic,
        )

    def _respool(self) -> None:
        """Move what waits in memory to the spool while its disk takes it."""
        while self._memory and self._spool.append(self._memory[0]):
            self._memory_bytes -= _memory_size(self._memory.popleft())
        if not self._memory:
            self._memory_bytes = 0

    def _backlog(self) -> list[tuple[int, SpoolRecord]]:
        """The oldest records to resend: the spool's, else (its disk full) memory's."""
        entries = self._spool.peek(1 if self._backoff > 1.0 else _RESEND_BATCH)
        if entries or not self._memory:
            return entries
        n = 1 if self._backoff > 1.0 else _RESEND_BATCH
        return [(i + 1, rec) for i, rec in enumerate(itertools.islice(self._memory, n))]

    def _maybe_resend(self) -> None:
        now = time.monotonic()
        if now < self._next_resend:
            return
        self._respool()
        # After a failure, probe with one record so a dead broker costs one timeout.
        entries = self._backlog()
        if not entries:
            self._spooling = False
            return
        from_memory = len(self._spool) == 0
        results: dict[int, Any] = {}
        sent = 0
        for _, rec in entries:
            if rec.seq in self._resent_ok:
                continue
            self._produce(rec, partial(_record_result, results, rec.seq))
            sent += 1
        self._producer.flush(self._timeout_s + 1)
        done_offset, done = 0, 0
        prefix = True
        for offset, rec in entries:
            ok = rec.seq in self._resent_ok or (rec.seq in results and results[rec.seq] is None)
            if ok and rec.seq in results:
                self.metrics.delivered.labels(rec.source or "unknown").inc()
            if ok and prefix:
                done_offset, done = offset, done + 1
                self._resent_ok.discard(rec.seq)
            elif ok:
                self._resent_ok.add(rec.seq)
            else:
                prefix = False
        if done and from_memory:
            for _ in range(done):
                self._memory_bytes -= _memory_size(self._memory.popleft())
        elif done:
            self._spool.advance(done_offset, done)
        if prefix:
            self._backoff = 1.0
            self._next_resend = 0.0
            if len(self._spool) == 0 and not self._memory:
                self._spooling = False
                log.info("%s: broker available again; spool drained", self.name)
        else:
            self._backoff = min(max(self._backoff * 2, 2.0), _MAX_BACKOFF_S)
            self._next_resend = time.monotonic() + self._backoff
            log.info(
                "%s: resend failed; %d events spooled, next try in %.0fs",
                self.name,
                self.spooled,
                self._backoff,
            )

    def _do_flush(self, marker: _Flush) -> None:
        self._producer.flush(self._timeout_s + 1)
        self._settle_failures()
        self._spool.sync()
        self._update_spool_gauges()  # metrics agree with the spool once flush() returns
        self._publish_counts()
        marker.pending = self._outstanding
        marker.done.set()

    def _shutdown(self) -> None:
        if len(self._producer):
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
            self._settle_failures()
        self._respool()
        if self._memory:
            lost = len(self._memory)
            for rec in self._memory:
                self.metrics.spool_rejected.labels(rec.source or "unknown").inc()
            log.error(
                "%s: %d undelivered events could NOT be kept: %s",
                self.name,
                lost,
                self._spool.last_error,
            )
            self._memory.clear()
            self._memory_bytes = 0
        self._spool.sync()
        self._update_spool_gauges()
        self._publish_counts()
        self._spool.close()

    def _publish_counts(self) -> None:
        """Delivery reports are counted locally and published once per worker loop."""
        if self._delivered_counts:
            counts, self._delivered_counts = self._delivered_counts, {}
            for source, n in counts.items():
                self.metrics.delivered.labels(source or "unknown").inc(n)

    def _update_spool_gauges(self) -> None:
        self.metrics.spool_bytes.labels(self.name).set(self._spool.unsent_bytes)
        self.metrics.spool_records.labels(self.name).set(self.spooled)
