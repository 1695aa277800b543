"""The gateway's HTTP stack: a starlette (ASGI) app on uvicorn, around `GatewayIngest`.

The ``gateway`` extra (``pip install "learnstream[gateway]"``) brings uvicorn and starlette.
The libraries do HTTP/1.1: parsing (h11), keep-alive, chunked bodies, ``Expect:
100-continue`` (the ``100`` goes out only when the app reads the body, so auth, path and size
are checked before a client sends it), pipelining, the idle timeout between requests
(``LEARNSTREAM_GATEWAY__IDLE_TIMEOUT_S``), graceful shutdown, and the OpenAPI document
(``GET /openapi.json``, from the endpoints' docstrings by starlette's `SchemaGenerator`).

Added here, as uvicorn's h11 protocol with a few hooks (`_GatewayProtocol`):

- a total deadline per request (``LEARNSTREAM_GATEWAY__REQUEST_TIMEOUT_S``): from its first
  byte, a request's line, headers and body must all arrive in time, or the connection is
  closed (a client trickling a byte every few seconds is cut off, not kept forever);
- a connection limit (``LEARNSTREAM_GATEWAY__MAX_CONNECTIONS``) that closes the oldest
  connection not inside a request (idle, or still sending its headers) to make room, and
  answers 503 only when every connection is inside a request; so slow clients cannot lock out
  the others;
- closing after a response that leaves a body unread (413, or an error before an ``Expect:
  100-continue`` body) first half-closes and drops input for a moment, so the kernel does not
  reset the connection before the client has read the response.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.endpoints import HTTPEndpoint
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from streams.producers.gateway import (
    LINGER_S,
    SKIP_BODY_BYTES,
    GatewayIngest,
    HttpError,
    log,
)

_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 46\r\n\r\n"
    b'{"error": "too many connections; retry later"}'
)
_BODY_READ = "learnstream.body_read"

SCHEMAS = SchemaGenerator(
    {
        "openapi": "3.0.3",
        "info": {
            "title": "learnstream ingest gateway",
            "version": "1",
            "description": "POST telemetry events (JSON or NDJSON) for one source's topic.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
)


def _ingest(request: Request) -> GatewayIngest:
    ingest: GatewayIngest = request.app.state.ingest
    return ingest


# --- the endpoints --------------------------------------------------------------------------


async def _read_body(request: Request, ingest: GatewayIngest, length: int | None) -> bytes:
    """The whole body; a chunked one is cut off (413) as soon as it passes the limit."""
    parts: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if length is None:
                ingest.check_size(total, exact=False)
            parts.append(chunk)
    except ClientDisconnect:
        raise HttpError(HTTPStatus.BAD_REQUEST, "client went away", close=True) from None
    request.scope[_BODY_READ] = True
    return b"".join(parts)


async def _post_events(request: Request, path: str) -> Response:
    ingest = _ingest(request)
    headers = request.headers
    ingest.authorize(headers.get("authorization"))
    source = ingest.source(path)
    length = ingest.body_length(
        content_encoding=headers.get("content-encoding"),
        transfer_encoding=headers.get("transfer-encoding"),
        content_lengths=headers.getlist("content-length"),
    )
    body = await _read_body(request, ingest, length)
    status, payload = await run_in_threadpool(
        ingest.ingest,
        source,
        body,
        content_type=headers.get("content-type", ""),
        idempotency_key=headers.get("idempotency-key", ""),
    )
    return JSONResponse(payload, int(status))


class Events(HTTPEndpoint):
    """``/v1/events/{source}``."""

    async def post(self, request: Request) -> Response:
        """Ingest events for one source.
        ---
        summary: Ingest telemetry events
        description: >-
          One JSON event, or NDJSON (one event per line; several lines that are not one JSON
          document are a batch too). Every event is validated against the source's schema;
          invalid ones are dead-lettered to telemetry.dlq with their line number, the valid
          ones are accepted anyway. Bodies over LEARNSTREAM_GATEWAY__MAX_BODY_BYTES get 413.
        security: [{bearer: []}]
        parameters:
          - {name: source, in: path, required: true, schema: {type: string,
             enum: [ralph, aidb, hybrid, vscode]}}
          - name: Idempotency-Key
            in: header
            required: false
            description: Line N of the body gets the id uuid5(key, source, N) unless it has one.
            schema: {type: string}
        requestBody:
          required: true
          content:
            application/json: {schema: {type: object}}
            application/x-ndjson: {schema: {type: string}}
        responses:
          "202":
            description: Every event accepted (queued in the producer).
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    accepted: {type: integer}
                    event_ids: {type: array, items: {type: string}}
          "422":
            description: Some events invalid (dead-lettered); the others were accepted.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    accepted: {type: integer}
                    rejected: {type: integer}
                    results:
                      type: array
                      items:
                        type: object
                        properties:
                          line: {type: integer}
                          status: {type: string, enum: [accepted, rejected]}
                          event_id: {type: string}
                          error: {type: string}
          "400": {description: Empty or malformed body.}
          "401": {description: Missing or invalid bearer token.}
          "404": {description: Unknown source.}
          "411": {description: Neither Content-Length nor a chunked body.}
          "413": {description: Body over the limit.}
        """
        return await _post_events(request, request.url.path)

    async def method_not_allowed(self, request: Request) -> Response:
        """Auth first (nothing answers before it), then 404 or 405."""
        return await _elsewhere(request)


class Health(HTTPEndpoint):
    """``/healthz``."""

    async def get(self, request: Request) -> Response:
        """Liveness and the producer's spool.
        ---
        summary: Health
        responses:
          "200":
            description: Serving.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    status: {type: string}
                    spooling: {type: boolean}
                    spooled: {type: integer}
        """
        return JSONResponse(_ingest(request).health())

    async def method_not_allowed(self, request: Request) -> Response:
        """405: GET only."""
        _ingest(request).method_not_allowed(request.method, "GET")


class Metrics(HTTPEndpoint):
    """``/metrics``."""

    async def get(self, request: Request) -> Response:
        """Prometheus metrics.
        ---
        summary: Prometheus metrics (gateway and producer)
        responses:
          "200": {description: Prometheus text format, content: {text/plain: {}}}
        """
        return Response(generate_latest(_ingest(request).registry), media_type=CONTENT_TYPE_LATEST)

    async def method_not_allowed(self, request: Request) -> Response:
        """405: GET only."""
        _ingest(request).method_not_allowed(request.method, "GET")


class OpenApi(HTTPEndpoint):
    """``/openapi.json``."""

    async def get(self, request: Request) -> Response:
        """This document.
        ---
        summary: The OpenAPI document of the gateway
        responses:
          "200": {description: OpenAPI 3 document, content: {application/json: {}}}
        """
        return JSONResponse(SCHEMAS.get_schema(routes=request.app.routes))

    async def method_not_allowed(self, request: Request) -> Response:
        """405: GET only."""
        _ingest(request).method_not_allowed(request.method, "GET")


async def _elsewhere(request: Request) -> Response:
    """Every other path and method: 401/404/405 as the path and token say."""
    ingest = _ingest(request)
    path = request.url.path
    if path.startswith("/v1/"):
        ingest.authorize(request.headers.get("authorization"))
        ingest.source(path)  # 404 for an unknown source or path
        if request.method == "POST":  # an events path starlette's route did not match: "/x/"
            return await _post_events(request, path)
        ingest.method_not_allowed(request.method, "POST")
    ingest.not_found(path)


async def _http_error(request: Request, exc: Exception) -> Response:
    """`HttpError` as ``{"error": ...}``; ``Connection: close`` when the body cannot be kept."""
    assert isinstance(exc, HttpError)
    headers = dict(exc.headers)
    if exc.close or not _can_skip_body(request):
        headers["Connection"] = "close"
    return JSONResponse({"error": exc.message}, int(exc.status), headers=headers)


def _can_skip_body(request: Request) -> bool:
    """Whether the connection can be kept after answering without reading the body.

    uvicorn reads past an unread body; that is worth it for a small one that is on its way.
    """
    if request.scope.get(_BODY_READ):
        return True
    headers = request.headers
    if headers.get("expect", "").lower() == "100-continue":
        return False  # the client waits for a 100 that never comes: its body never does
    if "transfer-encoding" in headers:
        return False
    value = headers.get("content-length")
    if value is None:
        return True
    return value.strip().isdigit() and int(value) <= SKIP_BODY_BYTES


def build_app(ingest: GatewayIngest) -> ASGIApp:
    """The gateway's ASGI app: the starlette routes in an access-log and metrics wrapper."""
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/v1/events/{source}", Events),
            Route("/healthz", Health),
            Route("/metrics", Metrics),
            Route("/openapi.json", OpenApi),
            Route("/{path:path}", _elsewhere, methods=methods, include_in_schema=False),
        ],
        exception_handlers={HttpError: _http_error},
    )
    app.router.redirect_slashes = False  # "/v1/events/ralph/" is the events endpoint, as before
    app.state.ingest = ingest
    return _Observed(app, ingest)


class _Observed:
    """Counts every response and writes its access line; a crash answers 500 and is logged."""

    def __init__(self, app: ASGIApp, ingest: GatewayIngest) -> None:
        self.app = app
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        length = 0

        async def observed(message: Message) -> None:
            nonlocal status, length
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                length += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            log.exception("gateway: error handling %s %s", scope["method"], scope["path"])
            if status == 0:
                body = b'{"error": "internal server error"}'
                await observed(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await observed({"type": "http.response.body", "body": body})
        finally:
            if status:
                query = scope.get("query_string", b"").decode("latin-1")
                client = scope.get("client") or ("-", 0)
                self.ingest.answered(
                    client=str(client[0]),
                    method=scope["method"],
                    target=scope["path"] + (f"?{query}" if query else ""),
                    status=status,
                    length=length,
                    started=started,
                )


# --- the connections ------------------------------------------------------------------------


class _LingeringTransport:
    """A transport whose ``close`` half-closes first when the request's body was left unread.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    response before the client reads it; so the write side is shut, input is dropped until the
    client closes, at most `LINGER_S`, and only then is the socket closed.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _GatewayProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        """Closing, or lingering before the close."""
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        """Close now, or after lingering when the client is still sending a body."""
        protocol, transport = self._protocol, self._transport
        if protocol.lingering or transport.is_closing():
            return
        if protocol.conn.their_state is h11.SEND_BODY and transport.can_write_eof():
            protocol.lingering = True
            transport.write_eof()
            protocol.loop.call_later(LINGER_S, transport.close)
            return
        transport.close()


class _GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol with the request deadline and the connection limit."""

    gateway: GatewayServer  # the gateway it serves: set on the subclass `GatewayServer` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = False
        self._raw: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        """Inside a request: its headers arrived and its response is not complete."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _body_complete(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit the connection (evicting an idle one at the limit), or answer 503 and close."""
        self._raw = transport
        admitted = self.gateway.admit(self)
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        if not admitted:
            transport.write(_FULL)
            transport.close()
            return
        # uvicorn waits for a first request without a timer: wait at most the idle timeout.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.gateway.forget(self)
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Start the request's deadline at its first byte; drop input while lingering."""
        if self.lingering:
            return
        if self._deadline is None and not self._body_complete():
            self._deadline = self.loop.call_later(
                self.gateway.settings.gateway.request_timeout_s, self._timed_out
            )
        super().data_received(data)

    def eof_received(self) -> None:
        """The client closed its side: while lingering, close now."""
        if self.lingering and self._raw is not None:
            self._raw.close()

    def on_response_complete(self) -> None:
        """The request is done: its deadline too."""
        self._cancel_deadline()
        super().on_response_complete()

    def evict(self) -> None:
        """Close at once (the connection limit needs the room)."""
        if self._raw is not None:
            self._raw.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._body_complete() or self._raw is None or self._raw.is_closing():
            return  # the request arrived in time; the app is answering it
        self.gateway.metrics.requests_timed_out.inc()
        log.debug("gateway: request from %s not complete in time", self.client)
        self._raw.close()


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: GatewayServer) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def on_tick(self, counter: int) -> bool:
        self.gateway.ingest.tick(len(self.gateway.connections))
        return await super().on_tick(counter)


class GatewayServer:
    """The gateway: `build_app` on uvicorn, bound at construction, in front of one producer.

    Run it with `serve_forever` (or `start`, from a thread), stop it with `close`. ``host``,
    ``port`` and ``url`` give the bound address (port 0 binds an ephemeral port).
    """

    def __init__(self, ingest: GatewayIngest, host: str, port: int) -> None:
        self.ingest = ingest
        self.connections: dict[_GatewayProtocol, float] = {}  # connection -> accepted at
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)  # a burst of clients is queued, not refused
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        protocol = type("GatewayProtocol", (_GatewayProtocol,), {"gateway": self})
        gateway = ingest.settings.gateway
        config = uvicorn.Config(
            build_app(ingest),
            http=protocol,
            ws="none",
            lifespan="off",
            loop="asyncio",
            log_config=None,
            access_log=False,  # learnstream.gateway.access writes the access lines
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=max(1, round(gateway.idle_timeout_s)),  # whole seconds
            timeout_graceful_shutdown=30,
            backlog=1024,
        )
        if logging.getLogger("uvicorn.error").level == logging.NOTSET:
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no start-up chatter
        self._uvicorn = _Uvicorn(config, self)
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- what the ingest knows -----------------------------------------------------------

    @property
    def settings(self) -> Any:
        """The gateway's settings."""
        return self.ingest.settings

    @property
    def producer(self) -> Any:
        """The producer the events go to."""
        return self.ingest.producer

    @property
    def metrics(self) -> Any:
        """The gateway's metrics."""
        return self.ingest.metrics

    @property
    def registry(self) -> Any:
        """The registry of the metrics."""
        return self.ingest.registry

    @property
    def token(self) -> bytes | None:
        """The bearer token, None when the gateway is open."""
        return self.ingest.token

    # --- address -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound host."""
        return str(self._socket.getsockname()[0])

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # --- life cycle ----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until `close` is called (from another thread)."""
        self._uvicorn.run(sockets=[self._socket])

    def start(self) -> threading.Thread:
        """Serve from a background thread; returns the thread once the server is up."""
        thread = self._thread = threading.Thread(
            target=self.serve_forever, name="gateway", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return thread

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in progress finish, then close (and flush) the producer.

        The producer is closed only when the gateway created it.
        """
        if self._closed:
            return
        self._closed = True
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()
        self.ingest.close()

    # --- connections (called on the event loop) ------------------------------------------

    def admit(self, connection: _GatewayProtocol) -> bool:
        """Count a new connection; at the limit, evict the oldest one not inside a request.

        False when every connection is inside a request (the new one is answered 503).
        """
        if len(self.connections) >= self.settings.gateway.max_connections:
            victim = next((c for c in self.connections if not c.busy), None)
            if victim is None:
                return False
            del self.connections[victim]
            self.metrics.connections_evicted.inc()
            victim.evict()
        self.connections[connection] = time.monotonic()
        return True

    def forget(self, connection: _GatewayProtocol) -> None:
        """A connection is gone."""
        self.connections.pop(connection, None)
