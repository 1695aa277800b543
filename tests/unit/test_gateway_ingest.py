"""The gateway's ingest checks without HTTP or a broker: auth, paths, body sizes, routes."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from learnstream.core.settings import load_settings
from schemas import Source
from streams.producers.gateway import GatewayIngest, HttpError, route_of, split_events


class _NoProducer:
    """Never called by the checks under test (ingest needs a real producer)."""

    spooling = False
    spooled = 0

    def close(self) -> None:
        raise AssertionError("the gateway did not create this producer: never closed by it")


def ingest(tmp_path: Path, **gateway: Any) -> GatewayIngest:
    settings = load_settings(data_dir=tmp_path, gateway=gateway)
    return GatewayIngest(settings, _NoProducer(), registry=None, owns_producer=False)  # type: ignore[arg-type]


def status(call: Any, *args: Any, **kwargs: Any) -> tuple[int, bool, str]:
    with pytest.raises(HttpError) as info:
        call(*args, **kwargs)
    return int(info.value.status), info.value.close, info.value.message


def test_token_auth(tmp_path: Path) -> None:
    open_gw = ingest(tmp_path)
    open_gw.authorize(None)
    open_gw.authorize("Bearer anything")
    gw = ingest(tmp_path, token="t0ken")
    gw.authorize("Bearer t0ken")
    gw.authorize("bearer   t0ken ")
    assert status(gw.authorize, None)[0] == 401
    assert status(gw.authorize, "Bearer nope")[0] == 401
    assert status(gw.authorize, "Basic t0ken")[0] == 401
    with pytest.raises(HttpError) as info:
        gw.authorize("Bearer t0kenx")
    assert "t0ken" not in info.value.message
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_sources_and_paths(tmp_path: Path) -> None:
    gw = ingest(tmp_path)
    assert gw.source("/v1/events/ralph") is Source.RALPH
    assert gw.source("/v1/events/vscode/") is Source.VSCODE
    code, _, message = status(gw.source, "/v1/events/emacs")
    assert code == 404 and "emacs" in message
    assert status(gw.source, "/v1/other")[0] == 404
    code, _, message = status(gw.not_found, "/nope")
    assert code == 404 and "GET /openapi.json" in message
    with pytest.raises(HttpError) as info:
        gw.method_not_allowed("GET", "POST")
    assert (info.value.status, info.value.headers) == (
        HTTPStatus.METHOD_NOT_ALLOWED,
        {"Allow": "POST"},
    )


def test_body_length_limits(tmp_path: Path) -> None:
    gw = ingest(tmp_path, max_body_bytes=100)

    def length(te: str | None = None, ce: str | None = None, *cl: str) -> int | None:
        return gw.body_length(content_encoding=ce, transfer_encoding=te, content_lengths=cl)

    assert length(None, None, "100") == 100
    assert length("chunked") is None
    assert length(None, "identity", "5, 5") == 5
    assert status(length) == (411, True, "Content-Length is required")
    assert status(length, None, None, "101")[:2] == (413, True)
    assert "LEARNSTREAM_GATEWAY__MAX_BODY_BYTES" in status(length, None, None, "101")[2]
    assert status(length, None, None, "5", "6")[:2] == (400, True)
    assert status(length, None, None, "-1")[:2] == (400, True)
    assert status(length, None, "gzip", "5")[:2] == (415, True)
    assert status(length, "gzip")[:2] == (501, True)
    gw.check_size(100, exact=False)
    assert status(gw.check_size, 101, exact=False)[:2] == (413, True)


def test_empty_bodies_are_400_before_any_event(tmp_path: Path) -> None:
    gw = ingest(tmp_path)
    for body in (b"", b" \n\n "):
        code, _, message = status(
            gw.ingest, Source.AIDB, body, content_type="application/x-ndjson", idempotency_key=""
        )
        assert code == 400 and "empty body" in message
    assert split_events(b"\n\n", "application/x-ndjson") == []


def test_route_labels() -> None:
    assert route_of("/v1/events/ralph") == "events"
    assert route_of("/v1/x") == "v1"
    assert route_of("/healthz") == "healthz"
    assert route_of("/metrics") == "metrics"
    assert route_of("/openapi.json") == "openapi"
    assert route_of("/") == "other"
