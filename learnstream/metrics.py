"""Serving a process's Prometheus metrics."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from learnstream.settings import Settings

log = logging.getLogger("learnstream.metrics")


def serve_metrics(settings: Settings, registry: CollectorRegistry | None = None) -> int | None:
    """Serve /metrics on ``LEARNSTREAM_METRICS_PORT`` if set; returns the port or None."""
    if settings.metrics_port is None:
        return None
    server, _ = start_http_server(settings.metrics_port, registry=registry or REGISTRY)
    port = int(server.server_port)
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
    return port
