"""The HTTP ingest gateway: tools that cannot link a Kafka client POST their events here.

    POST /v1/events/{source}   one JSON event, or NDJSON (one event per line)
    GET  /healthz              {"status": "ok", "spooling": bool, "spooled": int}
    GET  /metrics              Prometheus text (gateway and producer metrics)
    GET  /openapi.json         the OpenAPI document of these endpoints

This module is the ingest logic (`GatewayIngest`: token auth, body limits, validation, dead
letters, the 202/422 bodies, metrics, the access log and the periodic summary). HTTP itself
(keep-alive, chunked bodies, ``Expect: 100-continue``, timeouts) is served by uvicorn and
starlette in `streams.producers.gateway_asgi` (the ``gateway`` extra); `make_gateway` and
`serve_gateway` put the two together.

Every event is validated against its source's schema; valid ones are handed to one
`TelemetryProducer` (so they spool to disk while the broker is down), invalid ones are
answered per line (422) and dead-lettered to ``telemetry.dlq`` with the line number.
A 202 means the events are queued in the producer: they reach the topic or the on-disk spool
in the background, and `GatewayServer.close` flushes them on shutdown.

When ``LEARNSTREAM_GATEWAY__TOKEN`` is set, ``/v1/*`` needs ``Authorization: Bearer <token>``.

Retries: an event keeps its own ``event_id``; for events without one, send an
``Idempotency-Key`` header (any string unique to the request, the same on its retries): line N
of the body then gets the id ``uuid5(key, source, N)``, so a retried request maps to the same
ids and every consumer deduplicates it.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from learnstream.core.metrics import MetricSet
from learnstream.core.settings import Settings
from learnstream.core.summary import Summary
from schemas.base import Source
from schemas.errors import EventError, one_line
from schemas.parsing import parse_event, parse_source
from streams.producers.sdk import TelemetryProducer

if TYPE_CHECKING:
    from streams.producers.gateway_asgi import GatewayServer

log = logging.getLogger("learnstream.gateway")
access = logging.getLogger("learnstream.gateway.access")

EVENTS_PREFIX = "/v1/events/"
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)
SKIP_BODY_BYTES = 65_536  # an unread body up to this size is skipped to keep the connection
LINGER_S = 2.0  # after refusing an unread body, read and drop input this long before closing
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SOURCES = ", ".join(s.value for s in Source)
_ENDPOINTS = "POST /v1/events/{source}, GET /healthz, GET /metrics, GET /openapi.json"


@dataclass(frozen=True)
class GatewayMetrics(MetricSet):
    """The gateway's Prometheus metrics; one set per registry."""

    requests: Counter
    events_accepted: Counter
    events_rejected: Counter
    connections_evicted: Counter
    requests_timed_out: Counter
    latency: Histogram

    @classmethod
    def _create(cls, r: CollectorRegistry) -> GatewayMetrics:
        p = "learnstream_gateway_"
        return cls(
            requests=Counter(
                p + "requests", "HTTP requests answered", ["route", "code"], registry=r
            ),
            events_accepted=Counter(
                p + "events_accepted",
                "Events accepted and handed to the producer",
                ["source"],
                registry=r,
            ),
            events_rejected=Counter(
                p + "events_rejected",
                "Events rejected (answered 422 and dead-lettered)",
                ["source", "kind"],
                registry=r,
            ),
            connections_evicted=Counter(
                p + "connections_evicted",
                "Connections closed at the connection limit to make room (idle or slow)",
                registry=r,
            ),
            requests_timed_out=Counter(
                p + "requests_timed_out",
                "Requests cut off for not arriving within LEARNSTREAM_GATEWAY__REQUEST_TIMEOUT_S",
                registry=r,
            ),
            latency=Histogram(
                p + "request_seconds",
                "Time from request line to response sent",
                ["route"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
        )


class HttpError(Exception):
    """An error answered to the client as ``{"error": message}``."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.close = close


@dataclass
class _LineResult:
    line: int
    event_id: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is None:
            return {"line": self.line, "status": "accepted", "event_id": self.event_id}
        return {"line": self.line, "status": "rejected", "error": self.error}


def split_events(body: bytes, content_type: str) -> list[tuple[int, bytes]]:
    """The events in a request body as (line number, bytes), blank lines left out.

    An NDJSON content type, or a body of several lines that is not one JSON document as a
    whole (such as a pretty-printed event), is one event per line; anything else is one event.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in NDJSON_TYPES and b"\n" in body.strip():
        try:
            json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            pass
        else:
            return [(1, body)]
    elif media not in NDJSON_TYPES:
        return [(1, body)] if body.strip() else []
    out = []
    for number, physical in enumerate(body.split(b"\n"), start=1):
        line = physical.rstrip(b"\r")
        if line.strip():
            out.append((number, line))
    return out


def idempotent_id(key: str, source: Source, line: int) -> str:
    """The event id of line ``line`` of a request sent with ``Idempotency-Key: key``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"learnstream:{source.value}:{key}:{line}"))


def route_of(path: str) -> str:
    """The ``route`` label of a request path (metrics)."""
    if path.startswith("/v1/"):
        return "events" if path.startswith(EVENTS_PREFIX) else "v1"
    if path in ("/healthz", "/metrics"):
        return path[1:]
    if path == "/openapi.json":
        return "openapi"
    return "other"


class GatewayIngest:
    """What the gateway does with a request, whatever serves HTTP: checks, ingest, records.

    One per gateway: the settings, the producer (closed by `close` only when the gateway
    created it), the metrics on ``registry`` and the periodic summary.
    """

    def __init__(
        self,
        settings: Settings,
        producer: TelemetryProducer,
        *,
        registry: CollectorRegistry | None,
        owns_producer: bool,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.registry = registry or REGISTRY
        self.metrics = GatewayMetrics.on(self.registry)
        self.owns_producer = owns_producer
        token = settings.gateway.token.get_secret_value() if settings.gateway.token else ""
        self.token: bytes | None = token.encode() if token else None
        self.summary = Summary(log, "gateway", settings.summary_interval_s)
        self.summary.add(requests=0, events_accepted=0, events_rejected=0)

    # --- checks before the body ----------------------------------------------------------

    def authorize(self, header: str | None) -> None:
        """Check the ``Authorization`` header against the token (none configured: open)."""
        expected = self.token
        if expected is None:
            return
        if header is None:
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="learnstream"'},
            )
        scheme, _, given = header.strip().partition(" ")
        # Header values arrive decoded as latin-1; encoding back gives the bytes as sent.
        given_b = given.strip().encode("latin-1", errors="replace")
        ok = hmac.compare_digest(given_b, expected)
        if scheme.lower() != "bearer" or not ok:
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="learnstream", error="invalid_token"'},
            )

    @staticmethod
    def source(path: str) -> Source:
        """The source of an events path; 404 for any other path or an unknown source."""
        if not path.startswith(EVENTS_PREFIX):
            raise HttpError(
                HTTPStatus.NOT_FOUND,
                f"no such endpoint {path!r}; events go to POST /v1/events/{{source}} with "
                f"source one of: {_SOURCES}",
            )
        name = unquote(path[len(EVENTS_PREFIX) :].strip("/"))
        try:
            return parse_source(name)
        except EventError as exc:
            raise HttpError(HTTPStatus.NOT_FOUND, exc.reason) from None

    def body_length(
        self,
        *,
        content_encoding: str | None,
        transfer_encoding: str | None,
        content_lengths: Iterable[str],
    ) -> int | None:
        """The Content-Length, or None for a chunked body; raises for 400/411/413/415/501."""
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
                close=True,
            )
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise HttpError(
                    HTTPStatus.NOT_IMPLEMENTED,
                    f"Transfer-Encoding {transfer_encoding!r} is not supported",
                    close=True,
                )
            return None
        values = list(content_lengths)
        if not values:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", close=True)
        lengths = {v.strip() for value in values for v in value.split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length", close=True)
        length = int(next(iter(lengths)))
        self.check_size(length, exact=True)
        return length

    def check_size(self, size: int, *, exact: bool) -> None:
        """413 when a body of ``size`` bytes (so far, unless ``exact``) is over the limit."""
        limit = self.settings.gateway.max_body_bytes
        if size > limit:
            what = f"body is {size} bytes, over" if exact else "body is over"
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{what} the limit of {limit} bytes "
                "(LEARNSTREAM_GATEWAY__MAX_BODY_BYTES); send smaller batches",
                close=True,
            )

    @staticmethod
    def not_found(path: str) -> NoReturn:
        """404 naming the endpoints."""
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r}; endpoints: {_ENDPOINTS}")

    @staticmethod
    def method_not_allowed(method: str, allow: str) -> NoReturn:
        """405 with the ``Allow`` header."""
        raise HttpError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{method} is not allowed here; use {allow}",
            headers={"Allow": allow},
        )

    # --- the body ------------------------------------------------------------------------

    def ingest(
        self, source: Source, body: bytes, *, content_type: str, idempotency_key: str
    ) -> tuple[HTTPStatus, dict[str, Any]]:
        """Validate and emit the events of a body: 202 (all accepted) or 422, with its JSON.

        Invalid events are dead-lettered with their line number; valid ones are emitted even
        when some of their batch mates are not.
        """
        if not body.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty body: send one JSON event or NDJSON")
        producer = self.producer
        max_bytes = self.settings.max_event_bytes
        events = split_events(body, content_type)
        if not events:
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty body: send one JSON event or NDJSON")
        results: list[_LineResult] = []
        rejected = 0
        key = idempotency_key.strip()
        for number, raw in events:
            try:
                event = parse_event(
                    source, raw, max_bytes=max_bytes, max_depth=self.settings.max_event_depth
                )
            except EventError as exc:
                rejected += 1
                results.append(_LineResult(number, error=exc.reason))
                self._dead_letter(source, number, raw, exc)
                continue
            if key and event.event_id is None:
                # A retried request gets the same ids, so every consumer deduplicates it.
                event = event.model_copy(update={"event_id": idempotent_id(key, source, number)})
            results.append(_LineResult(number, event_id=producer.emit(event)))
        accepted = len(results) - rejected
        self.summary.add(events_accepted=accepted, events_rejected=rejected)
        if accepted:
            self.metrics.events_accepted.labels(source.value).inc(accepted)
        if not rejected:
            return HTTPStatus.ACCEPTED, {
                "accepted": accepted,
                "event_ids": [r.event_id for r in results],
            }
        return HTTPStatus.UNPROCESSABLE_ENTITY, {
            "accepted": accepted,
            "rejected": rejected,
            "results": [r.as_json() for r in results],
        }

    def _dead_letter(self, source: Source, number: int, raw: bytes, exc: EventError) -> None:
        self.metrics.events_rejected.labels(source.value, exc.kind).inc()
        self.producer.dead_letter(  # an oversized line keeps its head (schemas.dlq)
            raw,
            exc.reason,
            source=source,
            stage="gateway",
            line_number=number,
            event_type=exc.event_type,
            error_kind=exc.kind,
        )

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body."""
        producer = self.producer
        return {"status": "ok", "spooling": producer.spooling, "spooled": producer.spooled}

    # --- after the response --------------------------------------------------------------

    def answered(
        self,
        *,
        client: str,
        method: str,
        target: str,
        status: int,
        length: int,
        started: float,
    ) -> None:
        """Count a response (metrics, summary) and write its access line.

        ``started`` is the request's `time.perf_counter` at its start; ``target`` the path
        with its query.
        """
        route = route_of(target.split("?", 1)[0])
        took = time.perf_counter() - started
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(took)
        self.summary.add(requests=1)
        if self.settings.gateway.access_log and access.isEnabledFor(logging.INFO):
            access.info(
                '%s "%s %s" %d %d %.1fms',
                client,
                method,
                one_line(target, 200),
                status,
                length,
                took * 1000,
            )

    def tick(self, connections: int) -> None:
        """Called about twice a second while serving: the periodic summary line."""
        self.summary.gauge(connections=connections)
        self.summary.maybe_log()

    def close(self) -> None:
        """Close (and flush) the producer when the gateway created it."""
        if self.owns_producer:
            self.producer.close()


def make_gateway(
    settings: Settings,
    *,
    producer: TelemetryProducer | None = None,
    registry: CollectorRegistry | None = None,
    host: str | None = None,
    port: int | None = None,
) -> GatewayServer:
    """Build the gateway bound to ``host:port`` (from ``settings.gateway`` when None).

    Port 0 binds an ephemeral port (see ``server.port``). Without ``producer`` one is created
    (``name="gateway"``, ``stage="gateway"``) on ``registry`` and closed by ``server.close()``.
    Call ``server.serve_forever()`` or ``server.start()`` to serve. Needs the ``gateway``
    extra (uvicorn, starlette): ModuleNotFoundError without it.
    """
    from streams.producers.gateway_asgi import GatewayServer

    host = host if host is not None else settings.gateway.host
    port = port if port is not None else settings.gateway.port
    owns = producer is None
    if producer is None:
        producer = TelemetryProducer(
            settings=settings, name="gateway", stage="gateway", registry=registry
        )
    try:
        ingest = GatewayIngest(settings, producer, registry=registry, owns_producer=owns)
        return GatewayServer(ingest, host, port)
    except BaseException:
        if owns:
            producer.close()
        raise


def serve_gateway(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then flush the producer and return."""
    from learnstream.core.signals import configure_logging, process_lifecycle

    configure_logging(settings)
    server = make_gateway(settings, host=host, port=port)
    with process_lifecycle(settings, log) as stop:
        try:
            if server.token is None and server.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning(
                    "no LEARNSTREAM_GATEWAY__TOKEN set: anyone who can reach %s may post events",
                    server.url,
                )
            server.start()
            print(f"gateway listening on {server.url}", flush=True)
            while not stop.wait(0.5):
                pass
            print("gateway stopping: flushing events", flush=True)
        finally:
            server.close()
    print("gateway stopped", flush=True)


def __getattr__(name: str) -> Any:
    """`GatewayServer` lives with the HTTP stack (`streams.producers.gateway_asgi`)."""
    if name == "GatewayServer":
        from streams.producers.gateway_asgi import GatewayServer

        return GatewayServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
