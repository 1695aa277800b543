"""The HTTP ingest gateway: tools that cannot link a Kafka client POST their events here.

Standard library only (``http.server``), so it runs on the base install::

    POST /v1/events/{source}   one JSON event, or NDJSON (one event per line)
    GET  /healthz              {"status": "ok", "spooling": bool, "spooled": int}
    GET  /metrics              Prometheus text (gateway and producer metrics)

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

import contextlib
import hmac
import io
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from learnstream.metrics import MetricSet
from learnstream.settings import Settings
from learnstream.summary import Summary
from schemas.base import Source
from schemas.errors import EventError, one_line
from schemas.parsing import parse_event, parse_source
from streams.producers.sdk import TelemetryProducer

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
IDLE_TIMEOUT_S = 60.0  # default of LEARNSTREAM_GATEWAY__IDLE_TIMEOUT_S
SKIP_BODY_BYTES = 65_536  # an unread body up to this size is skipped to keep the connection
LINGER_S = 2.0  # after refusing an unread body, read and drop input this long before closing
_CHUNK_LINE_MAX = 1024
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SOURCES = ", ".join(s.value for s in Source)
_ENDPOINTS = "POST /v1/events/{source}, GET /healthz, GET /metrics"


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


class _DeadlineReader(io.RawIOBase):
    """A socket reader that gives each request a total deadline from its first byte.

    Waiting for a request's first byte may take ``idle_s``; from then on its line, headers
    and body must all arrive within ``total_s``, whatever the pace of the bytes (a client
    trickling a byte every few seconds is cut off, not kept forever).
    """

    def __init__(self, sock: socket.socket, *, idle_s: float, total_s: float) -> None:
        super().__init__()
        self.sock = sock
        self.idle_s = idle_s
        self.total_s = total_s
        self.started: float | None = None

    def next_request(self) -> None:
        """The next read waits for a new request (idle timeout)."""
        self.started = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.started is None:
            self.sock.settimeout(self.idle_s)
        else:
            left = self.started + self.total_s - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request not complete within {self.total_s:g} s")
            self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(buffer)
        except TimeoutError:
            if self.started is not None:
                raise TimeoutError(f"request not complete within {self.total_s:g} s") from None
            raise
        finally:
            self.sock.settimeout(self.idle_s)  # writes get the idle timeout
        if n and self.started is None:
            self.started = time.monotonic()
        return n


def idempotent_id(key: str, source: Source, line: int) -> str:
    """The event id of line ``line`` of a request sent with ``Idempotency-Key: key``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"learnstream:{source.value}:{key}:{line}"))


class GatewayServer(ThreadingHTTPServer):
    """The gateway: a threading HTTP/1.1 server (keep-alive) in front of one producer.

    Run it with `serve_forever` (or `start`), stop it with `close`. ``host``, ``port`` and
    ``url`` give the bound address (port 0 binds an ephemeral port).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog (socketserver's 5 refuses bursts of clients)

    def __init__(
        self,
        address: tuple[str, int],
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
        self._lock = threading.Condition()
        self._inflight = 0
        self._stopping = False
        self._connections: dict[socket.socket, float] = {}  # connection -> accepted at
        self._busy: set[socket.socket] = set()  # connections inside a request
        self._serving = threading.Event()
        self._closed = False
        self.summary = Summary(log, "gateway", settings.summary_interval_s)
        self.summary.add(requests=0, events_accepted=0, events_rejected=0)
        super().__init__(address, GatewayHandler)

    def service_actions(self) -> None:
        """Once per accept loop (every poll interval): the periodic summary line."""
        self.summary.gauge(connections=len(self._connections))
        self.summary.maybe_log()

    # --- address -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound host."""
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # --- life cycle ----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections until `close` (or ``shutdown``) is called."""
        self._serving.set()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving.clear()

    def start(self) -> threading.Thread:
        """Serve from a background thread; returns the thread."""
        thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        thread.start()
        self._serving.wait(5)
        return thread

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in progress finish, then close (and flush) the producer.

        The producer is closed only when the gateway created it.
        """
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._stopping = True
        if self._serving.is_set():
            self.shutdown()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight and time.monotonic() < deadline:
                self._lock.wait(0.1)
            idle = list(self._connections)
        for conn in idle:  # wake handlers waiting for a next request on keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self.owns_producer:
            self.producer.close()

    def begin_request(self) -> bool:
        """Count a request in progress; False once the gateway is stopping."""
        with self._lock:
            if self._stopping:
                return False
            self._inflight += 1
            return True

    def end_request(self) -> None:
        """A request counted by `begin_request` is done."""
        with self._lock:
            self._inflight -= 1
            self._lock.notify_all()

    # --- connections ---------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a handler thread. At the connection limit the oldest connection that is not
        inside a request (idle, or still sending its headers) is closed to make room; when
        every one is inside a request, the new one is answered 503."""
        victim: socket.socket | None = None
        with self._lock:
            full = len(self._connections) >= self.settings.gateway.max_connections
            if full:
                idle = [c for c in self._connections if c not in self._busy]
                if idle:
                    victim = min(idle, key=self._connections.__getitem__)
                    del self._connections[victim]
                    full = False
            if not full:
                self._connections[request] = time.monotonic()
        if victim is not None:
            self.metrics.connections_evicted.inc()
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)
        if full:
            body = b'{"error": "too many connections; retry later"}'
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget a connection when its handler is done with it."""
        with self._lock:
            self._connections.pop(request, None)
            self._busy.discard(request)
        super().shutdown_request(request)

    def busy(self, connection: socket.socket, busy: bool) -> None:
        """Mark a connection as inside a request (never evicted) or not."""
        with self._lock:
            if busy:
                self._busy.add(connection)
            else:
                self._busy.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an error that escaped a handler (never sent to the client)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("gateway: connection from %s lost", client_address, exc_info=True)
            return
        log.exception("gateway: unhandled error serving %s", client_address)


class _GatewayServer6(GatewayServer):
    address_family = socket.AF_INET6


class GatewayHandler(BaseHTTPRequestHandler):
    """One connection: answers requests until the client closes or an error closes it."""

    protocol_version = "HTTP/1.1"
    server_version = "learnstream-gateway"
    timeout = IDLE_TIMEOUT_S  # until setup() hands reads to the _DeadlineReader
    # Headers and body are two writes; with Nagle on, the body waits for the client's delayed
    # ACK (about 40 ms a request on Linux).
    disable_nagle_algorithm = True
    server: GatewayServer

    # --- dispatch ------------------------------------------------------------------------

    def do_GET(self) -> None:
        """``/healthz`` and ``/metrics``."""
        self._dispatch(self._get)

    def do_POST(self) -> None:
        """``/v1/events/{source}``."""
        self._dispatch(self._post)

    def do_PUT(self) -> None:
        """Not allowed anywhere."""
        self._dispatch(self._other)

    def do_DELETE(self) -> None:
        """Not allowed anywhere."""
        self._dispatch(self._other)

    def do_PATCH(self) -> None:
        """Not allowed anywhere."""
        self._dispatch(self._other)

    def setup(self) -> None:
        """Read through a `_DeadlineReader`: each request gets a total deadline."""
        gateway = self.server.settings.gateway
        super().setup()
        self._reader = _DeadlineReader(
            self.connection, idle_s=gateway.idle_timeout_s, total_s=gateway.request_timeout_s
        )
        self.rfile = io.BufferedReader(self._reader, self.rbufsize if self.rbufsize > 0 else 65536)

    def handle_one_request(self) -> None:
        """Serve one request; a client that resets or stalls just ends the connection."""
        self._reader.next_request()
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as exc:
            log.debug("gateway: connection from %s ended: %r", self.client_address[0], exc)
            if isinstance(exc, TimeoutError) and self._reader.started is not None:
                self.server.metrics.requests_timed_out.inc()
            self.close_connection = True

    def parse_request(self) -> bool:
        """Parse the request line and headers; resets per-request state first."""
        self._route_label = "other"
        self._body_read = False
        return super().parse_request()

    def _dispatch(self, handler: Callable[[str], None]) -> None:
        self.server.busy(self.connection, True)
        try:
            self._dispatch_busy(handler)
        finally:
            self.server.busy(self.connection, False)

    def _dispatch_busy(self, handler: Callable[[str], None]) -> None:
        started = self._started = time.perf_counter()
        path = urlsplit(self.path).path
        route = self._route_label = self._route(path)
        if not self.server.begin_request():
            try:
                self._error(
                    HttpError(
                        HTTPStatus.SERVICE_UNAVAILABLE, "gateway is shutting down", close=True
                    )
                )
            except OSError:
                self.close_connection = True
            return
        try:
            try:
                handler(path)
            except HttpError as exc:
                self._error(exc)
            except OSError:
                raise
            except Exception:
                log.exception("gateway: error handling %s %s", self.command, path)
                self._error(
                    HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error", close=True)
                )
        except OSError as exc:  # the client went away, or stalled past the timeout
            log.info("gateway: connection from %s lost: %r", self.client_address[0], exc)
            self.close_connection = True
        finally:
            self.server.end_request()
            self.server.metrics.latency.labels(route).observe(time.perf_counter() - started)

    @staticmethod
    def _route(path: str) -> str:
        if path.startswith("/v1/"):
            return "events" if path.startswith(EVENTS_PREFIX) else "v1"
        if path in ("/healthz", "/metrics"):
            return path[1:]
        return "other"

    def _get(self, path: str) -> None:
        if path == "/healthz":
            producer = self.server.producer
            self._json(
                HTTPStatus.OK,
                {"status": "ok", "spooling": producer.spooling, "spooled": producer.spooled},
            )
        elif path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path.startswith("/v1/"):
            self._authorize()
            self._not_found_or_method(path)
        else:
            self._not_found(path)

    def _post(self, path: str) -> None:
        if not path.startswith("/v1/"):
            if path in ("/healthz", "/metrics"):
                raise self._method_not_allowed("GET")
            self._not_found(path)
        self._authorize()
        source = self._source(path)
        body = self._read_body()
        self._ingest(source, body)

    def _other(self, path: str) -> None:
        if path.startswith("/v1/"):
            self._authorize()
            self._not_found_or_method(path)
        if path in ("/healthz", "/metrics"):
            raise self._method_not_allowed("GET")
        self._not_found(path)

    def _not_found_or_method(self, path: str) -> NoReturn:
        self._source(path)  # 404 for an unknown source or path
        raise self._method_not_allowed("POST")

    def _method_not_allowed(self, allow: str) -> HttpError:
        return HttpError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{self.command} is not allowed here; use {allow}",
            headers={"Allow": allow},
        )

    def _not_found(self, path: str) -> NoReturn:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r}; endpoints: {_ENDPOINTS}")

    # --- checks before the body ----------------------------------------------------------

    def handle_expect_100(self) -> bool:
        """Answer ``Expect: 100-continue`` only when the request would be read.

        Auth, path and size are checked first, so a client does not send a body that would be
        refused anyway.
        """
        if self.command == "POST":
            path = urlsplit(self.path).path
            self._route_label = self._route(path)
            try:
                if path.startswith("/v1/"):
                    self._authorize()
                    self._source(path)
                    self._body_length()
            except HttpError as exc:
                exc.close = True  # the body was never sent
                self._error(exc)
                return False
        return super().handle_expect_100()

    def _authorize(self) -> None:
        expected = self.server.token
        if expected is None:
            return
        header = self.headers.get("Authorization")
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

    def _source(self, path: str) -> Source:
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

    def _body_length(self) -> int | None:
        """The Content-Length, or None for a chunked body; raises for 400/411/413/415."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
                close=True,
            )
        transfer = self.headers.get("Transfer-Encoding")
        if transfer is not None:
            if transfer.strip().lower() != "chunked":
                raise HttpError(
                    HTTPStatus.NOT_IMPLEMENTED,
                    f"Transfer-Encoding {transfer!r} is not supported",
                    close=True,
                )
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", close=True)
        lengths = {v.strip() for value in values for v in value.split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length", close=True)
        length = int(next(iter(lengths)))
        limit = self.server.settings.gateway.max_body_bytes
        if length > limit:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body is {length} bytes, over the limit of {limit} bytes "
                "(LEARNSTREAM_GATEWAY__MAX_BODY_BYTES); send smaller batches",
                close=True,
            )
        return length

    # --- the body ------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self._body_length()
        if length is None:
            body = self._read_chunked(self.server.settings.gateway.max_body_bytes)
        else:
            body = self.rfile.read(length)
            if len(body) < length:
                raise ConnectionError(f"body ended after {len(body)} of {length} bytes")
        self._body_read = True
        if not body.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty body: send one JSON event or NDJSON")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE_MAX + 1)
            if not line.endswith(b"\n"):
                if not line:
                    raise ConnectionError("body ended inside a chunked body")
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunked body", close=True)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(
                    HTTPStatus.BAD_REQUEST, "malformed chunk size", close=True
                ) from None
            if size < 0:
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunk size", close=True)
            if size == 0:
                break
            total += size
            if total > limit:
                raise HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body is over the limit of {limit} bytes "
                    "(LEARNSTREAM_GATEWAY__MAX_BODY_BYTES); send smaller batches",
                    close=True,
                )
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3).strip():
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunked body", close=True)
            parts.append(chunk)
        while True:  # trailers, up to the blank line
            line = self.rfile.readline(_CHUNK_LINE_MAX + 1)
            if not line or not line.strip():
                break
        return b"".join(parts)

    def _ingest(self, source: Source, body: bytes) -> None:
        server = self.server
        producer = server.producer
        max_bytes = server.settings.max_event_bytes
        events = split_events(body, self.headers.get("Content-Type", ""))
        if not events:
            raise HttpError(HTTPStatus.BAD_REQUEST, "empty body: send one JSON event or NDJSON")
        results: list[_LineResult] = []
        rejected = 0
        idempotency_key = (self.headers.get("Idempotency-Key") or "").strip()
        for number, raw in events:
            try:
                event = parse_event(
                    source, raw, max_bytes=max_bytes, max_depth=server.settings.max_event_depth
                )
            except EventError as exc:
                rejected += 1
                results.append(_LineResult(number, error=exc.reason))
                self._dead_letter(source, number, raw, exc)
                continue
            if idempotency_key and event.event_id is None:
                # A retried request gets the same ids, so every consumer deduplicates it.
                event = event.model_copy(
                    update={"event_id": idempotent_id(idempotency_key, source, number)}
                )
            results.append(_LineResult(number, event_id=producer.emit(event)))
        accepted = len(results) - rejected
        server.summary.add(events_accepted=accepted, events_rejected=rejected)
        if accepted:
            server.metrics.events_accepted.labels(source.value).inc(accepted)
        if not rejected:
            self._json(
                HTTPStatus.ACCEPTED,
                {"accepted": accepted, "event_ids": [r.event_id for r in results]},
            )
            return
        self._json(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            {
                "accepted": accepted,
                "rejected": rejected,
                "results": [r.as_json() for r in results],
            },
        )

    def _dead_letter(self, source: Source, number: int, raw: bytes, exc: EventError) -> None:
        self.server.metrics.events_rejected.labels(source.value, exc.kind).inc()
        self.server.producer.dead_letter(  # an oversized line keeps its head (schemas.dlq)
            raw,
            exc.reason,
            source=source,
            stage="gateway",
            line_number=number,
            event_type=exc.event_type,
            error_kind=exc.kind,
        )

    # --- responses -----------------------------------------------------------------------

    def _json(self, status: HTTPStatus, payload: Any, **kwargs: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", **kwargs)

    def _error(self, exc: HttpError) -> None:
        close = exc.close or not self._skip_body()
        self._json(exc.status, {"error": exc.message}, headers=exc.headers, close=close)

    def _skip_body(self) -> bool:
        """Read past a small unread body so the connection can be kept; False: close it."""
        if getattr(self, "_body_read", True) or self.headers is None:
            return True
        self._body_read = True
        if self.headers.get("Transfer-Encoding") is not None:
            return False
        value = self.headers.get("Content-Length")
        if value is None:
            return True
        if not value.strip().isdigit() or int(value) > SKIP_BODY_BYTES:
            return False
        length = int(value)
        return len(self.rfile.read(length)) == length

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        if close:
            self.close_connection = True
            # Closing with unread input makes the kernel send RST, which can destroy this
            # response before the client reads it: `finish` drains the input first.
            self._linger = not getattr(self, "_body_read", True)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        route = getattr(self, "_route_label", "other")
        self.server.metrics.requests.labels(route, str(int(status))).inc()
        self.server.summary.add(requests=1)
        if self.server.settings.gateway.access_log and access.isEnabledFor(logging.INFO):
            started = getattr(self, "_started", None)
            took = (time.perf_counter() - started) * 1000 if started is not None else 0.0
            access.info(
                '%s "%s %s" %d %d %.1fms',
                self.client_address[0],
                self.command,
                one_line(self.path, 200),
                int(status),
                len(body),
                took,
            )

    def finish(self) -> None:
        """Flush the last response; when input was left unread, drain it before closing."""
        super().finish()
        if not getattr(self, "_linger", False):
            return
        sock = self.connection
        deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):
                    break

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by ``http.server`` itself (bad request line, ...), as JSON."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
        self._error(HttpError(status, message or status.phrase, close=True))

    def log_message(self, format: str, *args: Any) -> None:
        """Access log lines go to the ``learnstream.gateway`` logger at DEBUG."""
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        """Protocol errors go to the ``learnstream.gateway`` logger."""
        log.info("%s %s", self.address_string(), format % args)


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
    Call ``server.serve_forever()`` or ``server.start()`` to serve.
    """
    host = host if host is not None else settings.gateway.host
    port = port if port is not None else settings.gateway.port
    owns = producer is None
    if producer is None:
        producer = TelemetryProducer(
            settings=settings, name="gateway", stage="gateway", registry=registry
        )
    cls = _GatewayServer6 if ":" in host else GatewayServer
    try:
        return cls((host, port), settings, producer, registry=registry, owns_producer=owns)
    except BaseException:
        if owns:
            producer.close()
        raise


def serve_gateway(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then flush the producer and return."""
    from learnstream.signals import configure_logging, process_lifecycle

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
