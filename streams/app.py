"""The Faust app: one app, one module per agent (streams/agents/), built from the settings.

`create_app(settings)` wires the shared context (`streams.context`: embedding model, Qdrant,
metrics) and registers the agents; `run_worker` runs it and closes the context once it has
stopped. Against the dev broker topics cannot be declared (the mock cluster has no
CreateTopics), so ``topic_allow_declare`` is off there; against Kafka/Redpanda create the
topics first with `learnstream topics create`.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from learnstream.core.brokerprofile import profile_for
from learnstream.core.kafka import bootstrap_servers, client_config
from learnstream.core.net import free_port
from learnstream.core.settings import Settings
from streams.context import StreamContext, build_context

log = logging.getLogger("learnstream.worker")


def broker_urls(settings: Settings) -> list[str]:
    """Faust broker URLs from the bootstrap servers."""
    return [f"kafka://{hp.strip()}" for hp in bootstrap_servers(settings).split(",") if hp.strip()]


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials from the Kafka security settings (None for PLAINTEXT)."""
    k = settings.kafka
    protocol = k.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(k.ssl_ca_location) if k.ssl_ca_location else None
        )
        if k.ssl_certificate_location:
            context.load_cert_chain(
                str(k.ssl_certificate_location),
                str(k.ssl_key_location) if k.ssl_key_location else None,
                k.ssl_key_password.get_secret_value() if k.ssl_key_password else None,
            )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=k.sasl_username,
        password=k.sasl_password.get_secret_value() if k.sasl_password else None,
        ssl_context=context,
        mechanism=k.sasl_mechanism or "PLAIN",
    )


def web_host(settings: Settings) -> str:
    """The host name other workers' redirects point at: the web server's bind address, or the
    host name where it listens on every address."""
    bind = settings.worker.web_bind
    if bind in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{bind}]" if ":" in bind else bind


def group_timings(settings: Settings) -> tuple[float, float]:
    """The worker's group session timeout and heartbeat interval, in seconds: the setting
    (``LEARNSTREAM_WORKER__SESSION_TIMEOUT_S``), else the broker profile's."""
    profile = profile_for(settings)
    session = settings.worker.session_timeout_s or profile.faust_session_timeout
    return session, min(profile.faust_heartbeat_interval, session / 3)


def create_app(
    settings: Settings,
    *,
    context: StreamContext | None = None,
    registry: CollectorRegistry | None = None,
    web_port: int | None = None,
    web_enabled: bool = True,
) -> faust.App:
    """The Faust app with every agent registered."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    ctx = context or build_context(settings, registry)
    profile = profile_for(settings)
    if web_port is None:
        web_port = settings.worker.web_port
    if web_port == 0:  # Faust wants a real port number
        web_port = free_port()
    from streams.mockcompat import prepare_faust

    prepare_faust(profile)
    session_timeout, heartbeat_interval = group_timings(settings)
    app = faust.App(
        settings.worker.app_id,
        broker=broker_urls(settings),
        broker_credentials=broker_credentials(settings),
        topic_allow_declare=profile.creates_topics,
        topic_disable_leader=True,
        store="memory://",
        web_enabled=web_enabled,
        web_port=web_port,
        web_bind=settings.worker.web_bind,
        web_host=web_host(settings),  # the canonical URL others are redirected to
        producer_linger=0.005,
        producer_compression_type=profile.compression,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16384,
        datadir=str(settings.data_dir / "faust"),
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=heartbeat_interval,
    )

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the media type.
        media_type = CONTENT_TYPE_LATEST.split(";")[0]
        return web.bytes(generate_latest(ctx.registry), content_type=media_type)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    from streams.agents import extract, queries, score, triggers

    score.register(app, ctx)
    if ctx.extraction is not None:
        extract.register(app, ctx)
    if settings.worker.triggers:
        triggers.register(app, ctx)
    queries.register(app, ctx)  # read-only pages over the stores this worker holds
    return app


def ensure_topics(settings: Settings) -> dict[str, str]:
    """Create the registry topics that are missing, where the broker can (not the mock).

    A consumer subscribed to a topic that does not exist yet only notices it at its next
    metadata refresh (minutes), so the worker makes sure its topics exist before it joins.
    Returns what `learnstream.topicadmin.create_topics` did; empty where nothing was asked.
    """
    from learnstream.topicadmin import create_topics

    if not (settings.worker.create_topics and profile_for(settings).creates_topics):
        return {}
    done = create_topics(client_config(settings), settings.kafka.replication_factor)
    created = sorted(name for name, state in done.items() if state == "created")
    if created:
        log.info("created topics %s", ", ".join(created))
    for name, state in sorted(done.items()):
        if state.startswith("exists with"):
            log.warning("topic %s %s", name, state)
    return done


class BoundedShutdownWorker(faust.Worker):
    """A Faust worker whose shutdown after SIGINT/SIGTERM takes ``shutdown_timeout_s`` at most.

    Faust's own shutdown waits on the broker (commits, producer flush, leaving the group);
    with the broker gone that can retry for minutes. After the bound the process exits
    (code 1, with one line saying so): its uncommitted work is re-read on the next start.
    """

    shutdown_timeout_s: float = 30.0

    def _schedule_shutdown(self, signal: Any) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(self.shutdown_timeout_s, self._force_exit, args=(signal,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)

    def _force_exit(self, signal: Any) -> None:
        log.error(
            "worker: still stopping %.0f s after %s (the broker is unreachable?); exiting now, "
            "uncommitted records are read again on the next start",
            self.shutdown_timeout_s,
            getattr(signal, "name", signal),
        )
        logging.shutdown()
        os._exit(1)


def run_worker(settings: Settings, *, web_port: int | None = None, loglevel: str = "info") -> None:
    """Run a Faust worker until SIGINT/SIGTERM (its shutdown is bounded)."""
    ensure_topics(settings)
    ctx = build_context(settings)
    app = create_app(settings, context=ctx, web_port=web_port)
    worker = BoundedShutdownWorker(app, loglevel=loglevel, quiet=True)
    worker.shutdown_timeout_s = settings.worker.shutdown_timeout_s
    # Faust's terminal spinner sets the root logger to DEBUG when the level is WARNING or
    # higher, so every debug call builds a record (-19% throughput in bench_faust_forward.py).
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:  # the agents have stopped: their pools, the extraction stage and Qdrant go too
        ctx.close()
