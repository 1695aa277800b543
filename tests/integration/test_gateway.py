"""The HTTP ingest gateway over real loopback HTTP, against the dev broker."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from learnstream.core.net import free_port
from learnstream.core.settings import load_settings
from schemas import SCHEMA_VERSION, Source
from streams.producers.gateway import GatewayServer, make_gateway
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import Record, consume
from tests.unit.events import event

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-tests"
NDJSON = "application/x-ndjson"


@dataclass
class Response:
    """A decoded HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Gateway:
    """A running gateway and what a test needs to talk to it."""

    server: GatewayServer
    registry: CollectorRegistry
    bootstrap: str

    def connect(self) -> http.client.HTTPConnection:
        """A keep-alive connection to the gateway."""
        return http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> Response:
        """One request (on ``conn`` when given, else on a new connection)."""
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def post(
        self,
        source: str,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> Response:
        """POST a body to ``/v1/events/{source}``."""
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", f"/v1/events/{source}", body, headers, conn)

    def sample(self, name: str, **labels: str) -> float:
        """A metric's current value on the gateway's registry."""
        return self.registry.get_sample_value(name, labels) or 0.0


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make(kafka_broker: BrokerUnderTest, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways on ephemeral ports; each is closed (and its producer flushed) after."""
    started: list[GatewayServer] = []

    def _make(**overrides: Any) -> Gateway:
        settings = load_settings(
            data_dir=tmp_path / f"data{len(started)}",
            kafka={"bootstrap_servers": kafka_broker.bootstrap_servers},
            **overrides,
        )
        registry = CollectorRegistry()
        server = make_gateway(settings, registry=registry, host="127.0.0.1", port=0)
        started.append(server)
        server.start()
        return Gateway(server, registry, kafka_broker.bootstrap_servers)

    yield _make
    for server in started:
        server.close()


@pytest.fixture
def gateway(make: GatewayFactory) -> Gateway:
    """A gateway with default settings and no token."""
    return make()


def lines(*events: dict[str, Any] | str) -> str:
    """An NDJSON body."""
    return "\n".join(e if isinstance(e, str) else json.dumps(e) for e in events) + "\n"


def flushed(gw: Gateway) -> None:
    """Wait until the gateway's producer has delivered everything."""
    assert gw.server.producer.flush(15) == 0


def on_topic(gw: Gateway, source: str, ids: set[str], settle: float = 0.0) -> list[Record]:
    """Records of ``telemetry.<source>`` carrying one of ``ids``."""
    flushed(gw)
    return consume(
        gw.bootstrap,
        [f"telemetry.{source}"],
        keep=lambda r: r.headers.get("event_id", b"").decode() in ids,
        until=lambda kept: len(kept) >= len(ids),
        settle=settle,
    )


def dead_letters(gw: Gateway, marker: str, count: int) -> list[dict[str, Any]]:
    """Dead letters whose original bytes contain ``marker``, as dicts."""
    flushed(gw)
    got = consume(
        gw.bootstrap,
        ["telemetry.dlq"],
        keep=lambda r: marker.encode() in base64.b64decode(r.json()["original_b64"]),
        until=lambda kept: len(kept) >= count,
        settle=1.0,
    )
    return [r.json() for r in got]


KEYED = {
    "ralph": ("task_submitted", "task_id"),
    "aidb": ("query", "session_id"),
    "hybrid": ("route_decided", "conversation_id"),
    "vscode": ("session_started", "session_id"),
}


# --- accepted events ----------------------------------------------------------------------


@pytest.mark.parametrize("source", [s.value for s in Source])
def test_single_event_lands_on_its_topic_with_key_headers_and_value(
    gateway: Gateway, unique: str, source: str
) -> None:
    event_type, key_field = KEYED[source]
    data = event(source, event_type, **{key_field: f"key-{unique}"})

    resp = gateway.post(source, json.dumps(data))

    assert resp.status == 202, resp.body
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["accepted"] == 1
    (event_id,) = body["event_ids"]
    (rec,) = on_topic(gateway, source, {event_id}, settle=1.0)
    assert rec.topic == f"telemetry.{source}"
    assert rec.key == f"key-{unique}".encode()
    assert rec.headers["source"] == source.encode()
    assert rec.headers["event_type"] == event_type.encode()
    assert rec.headers["schema_version"] == str(SCHEMA_VERSION).encode()
    assert rec.headers["content-type"] == b"application/json"
    value = rec.json()
    assert value["event_type"] == event_type
    assert value["event_id"] == event_id
    assert value[key_field] == f"key-{unique}"


def test_client_event_id_is_kept(gateway: Gateway, unique: str) -> None:
    data = event("aidb", "query", session_id=unique, event_id=f"client-{unique}")
    resp = gateway.post("aidb", json.dumps(data))
    assert resp.status == 202
    assert resp.json()["event_ids"] == [f"client-{unique}"]
    (rec,) = on_topic(gateway, "aidb", {f"client-{unique}"})
    assert rec.json()["event_id"] == f"client-{unique}"


def test_ndjson_batch_all_valid(gateway: Gateway, unique: str) -> None:
    batch = [event("vscode", "completion_accepted", session_id=f"{unique}-{i}") for i in range(25)]

    resp = gateway.post("vscode", lines(*batch), content_type=NDJSON)

    assert resp.status == 202, resp.body
    body = resp.json()
    assert body["accepted"] == 25
    ids = body["event_ids"]
    assert len(set(ids)) == 25
    got = on_topic(gateway, "vscode", set(ids), settle=1.0)
    assert sorted(r.headers["event_id"].decode() for r in got) == sorted(ids)
    by_id = {r.headers["event_id"].decode(): r for r in got}
    # The response lists ids in line order.
    assert [by_id[i].key for i in ids] == [f"{unique}-{i}".encode() for i in range(25)]


def test_several_lines_without_ndjson_type_are_a_batch(gateway: Gateway, unique: str) -> None:
    batch = [event("ralph", "iteration_started", task_id=unique, iteration=i) for i in (1, 2, 3)]
    resp = gateway.post("ralph", lines(*batch), content_type="application/json")
    assert resp.status == 202, resp.body
    assert resp.json()["accepted"] == 3


def test_pretty_printed_event_is_one_event(gateway: Gateway, unique: str) -> None:
    data = event("hybrid", "learning_triggered", conversation_id=unique)
    resp = gateway.post("hybrid", json.dumps(data, indent=2))
    assert resp.status == 202, resp.body
    assert resp.json()["accepted"] == 1


# --- rejected events ----------------------------------------------------------------------


def test_mixed_batch_accepts_valid_lines_and_dead_letters_the_rest(
    gateway: Gateway, unique: str
) -> None:
    good = [event("ralph", "task_submitted", task_id=f"{unique}-ok{i}") for i in range(3)]
    missing_prompt = event("ralph", "task_submitted", task_id=f"{unique}-bad", prompt=None)
    unknown_type = event("ralph", "task_submitted", task_id=f"{unique}-bad")
    unknown_type["event"] = "no_such_type"
    body = lines(good[0], missing_prompt, good[1], "", unknown_type, good[2])

    resp = gateway.post("ralph", body, content_type=NDJSON)

    assert resp.status == 422, resp.body
    out = resp.json()
    assert out["accepted"] == 3
    assert out["rejected"] == 2
    results = out["results"]
    assert [(r["line"], r["status"]) for r in results] == [
        (1, "accepted"),
        (2, "rejected"),
        (3, "accepted"),
        (5, "rejected"),  # the blank line 4 is skipped, numbering follows the body
        (6, "accepted"),
    ]
    assert "prompt" in results[1]["error"]
    assert "no_such_type" in results[3]["error"]
    assert "task_submitted" in results[3]["error"]  # lists the valid types
    ids = {r["event_id"] for r in results if r["status"] == "accepted"}

    got = consume(
        gateway.bootstrap,
        ["telemetry.ralph"],
        keep=lambda r: (r.key or b"").startswith(unique.encode()),
        until=lambda kept: len(kept) >= 3,
        settle=1.5,
    )
    assert {r.headers["event_id"].decode() for r in got} == ids
    assert all(r.key != f"{unique}-bad".encode() for r in got)

    letters = dead_letters(gateway, f"{unique}-bad", 2)
    assert sorted(d["line_number"] for d in letters) == [2, 5]
    by_line = {d["line_number"]: d for d in letters}
    assert by_line[2]["stage"] == "gateway"
    assert by_line[2]["source"] == "ralph"
    assert by_line[2]["error_kind"] == "invalid"
    assert by_line[2]["error"] == results[1]["error"]
    assert by_line[5]["error_kind"] == "unknown_type"
    original = json.loads(base64.b64decode(by_line[2]["original_b64"]))
    assert original == missing_prompt


def test_hostile_lines_are_rejected_per_line_and_their_batch_mates_accepted(
    gateway: Gateway, unique: str
) -> None:
    good = [event("aidb", "query", session_id=unique, query=f"q{n}") for n in range(2)]
    nested = '{"event_type": "query", "session_id": "' + unique + '", "ctx": '
    deep = nested + "[" * 300 + "]" * 300 + "}"
    surrogate = json.dumps({**event("aidb", "query", session_id=unique), "note": "\ud800"})
    nul = json.dumps({**event("aidb", "query", session_id=unique), "query": "a\x00b"})
    resp = gateway.post("aidb", lines(good[0], deep, surrogate, nul, good[1]), content_type=NDJSON)
    assert resp.status == 422, resp.body
    out = resp.json()
    assert (out["accepted"], out["rejected"]) == (2, 3)
    errors = [r.get("error", "") for r in out["results"]]
    assert "nests deeper than 64 levels" in errors[1]
    assert "lone surrogate" in errors[2] and "'note'" in errors[2]
    assert "NUL character" in errors[3] and "'query'" in errors[3]
    ids = {r["event_id"] for r in out["results"] if r["status"] == "accepted"}
    assert {r.headers["event_id"].decode() for r in on_topic(gateway, "aidb", ids)} == ids
    letters = dead_letters(gateway, unique, 3)
    assert sorted(d["error_kind"] for d in letters) == ["invalid_text", "invalid_text", "too_deep"]


def test_an_idempotency_key_gives_a_retried_request_the_same_ids(
    gateway: Gateway, unique: str
) -> None:
    body = lines(*(event("aidb", "query", session_id=unique, query=f"q{n}") for n in range(3)))

    def post(key: str) -> list[str]:
        headers = {"Content-Type": NDJSON, "Idempotency-Key": key}
        resp = gateway.request("POST", "/v1/events/aidb", body, headers)
        assert resp.status == 202, resp.body
        return list(resp.json()["event_ids"])

    first, retry, other = post(f"req-{unique}"), post(f"req-{unique}"), post(f"other-{unique}")
    assert first == retry and len(set(first)) == 3
    assert not set(other) & set(first)
    records = on_topic(gateway, "aidb", set(first), settle=1.0)
    assert sorted(r.headers["event_id"].decode() for r in records) == sorted(first * 2)


def test_malformed_json_line(gateway: Gateway, unique: str) -> None:
    good = event("aidb", "cache_hit", session_id=unique)
    broken = '{"event_type": "cache_hit", "query": "' + unique + '", '

    resp = gateway.post("aidb", lines(good, broken), content_type=NDJSON)

    assert resp.status == 422
    results = resp.json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[1] == {"line": 2, "status": "rejected", "error": results[1]["error"]}
    assert results[1]["error"].startswith("malformed JSON")
    (letter,) = dead_letters(gateway, unique + '", ', 1)
    assert letter["error_kind"] == "malformed"
    assert letter["line_number"] == 2
    assert base64.b64decode(letter["original_b64"]).decode() == broken


def test_single_invalid_event_is_422(gateway: Gateway) -> None:
    resp = gateway.post("vscode", "{not json")
    assert resp.status == 422
    out = resp.json()
    assert out["accepted"] == 0
    assert out["rejected"] == 1
    assert out["results"][0]["line"] == 1


def test_per_event_size_limit(make: GatewayFactory, unique: str) -> None:
    gw = make(max_event_bytes=1024)
    small = event("ralph", "task_submitted", task_id=f"{unique}-small")
    big = event("ralph", "task_submitted", task_id=f"{unique}-big", prompt="x" * 2000)

    resp = gw.post("ralph", lines(small, big), content_type=NDJSON)

    assert resp.status == 422
    out = resp.json()
    assert out["accepted"] == 1
    assert out["results"][1]["status"] == "rejected"
    assert "over the limit of 1024 bytes" in out["results"][1]["error"]
    (letter,) = dead_letters(gw, f"{unique}-big", 1)
    assert letter["error_kind"] == "oversized"
    assert (
        gw.sample("learnstream_gateway_events_rejected_total", source="ralph", kind="oversized")
        == 1
    )


# --- request errors -----------------------------------------------------------------------


def test_unknown_source_is_404_listing_sources(gateway: Gateway) -> None:
    resp = gateway.post("emacs", json.dumps(event("ralph", "task_submitted")))
    assert resp.status == 404
    error = resp.json()["error"]
    assert "emacs" in error
    for source in Source:
        assert source.value in error


def test_unknown_path_and_wrong_method(gateway: Gateway) -> None:
    assert gateway.request("GET", "/nope").status == 404
    assert gateway.request("POST", "/v1/other", "{}").status == 404
    resp = gateway.request("GET", "/v1/events/ralph")
    assert resp.status == 405
    assert resp.headers["allow"] == "POST"
    assert resp.json()["error"]
    assert gateway.request("POST", "/healthz", "{}").status == 405


def test_oversized_body_is_413_and_closes(make: GatewayFactory) -> None:
    gw = make(gateway={"max_body_bytes": 4096})
    conn = gw.connect()
    body = lines(*[event("aidb", "query") for _ in range(60)])
    assert len(body) > 4096

    resp = gw.post("aidb", body, content_type=NDJSON, conn=conn)

    assert resp.status == 413
    assert "4096" in resp.json()["error"]
    assert resp.headers["connection"] == "close"
    conn.close()
    # Just under the limit is fine.
    ok = lines(*[event("aidb", "query") for _ in range(20)])
    assert len(ok) <= 4096
    assert gw.post("aidb", ok, content_type=NDJSON).status == 202


def test_chunked_body_over_the_limit_is_413(make: GatewayFactory) -> None:
    gw = make(gateway={"max_body_bytes": 4096})
    chunk = (lines(event("aidb", "query")) * 5).encode()
    resp = gw.request("POST", "/v1/events/aidb", iter([chunk] * 20))  # http.client chunks it
    assert resp.status == 413
    # A chunked body within the limit is accepted.
    resp = gw.request("POST", "/v1/events/aidb", iter([chunk]), {"Content-Type": NDJSON})
    assert resp.status == 202, resp.body
    assert resp.json()["accepted"] == 5


def raw_exchange(gw: Gateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes and read one response (status, headers, body) until the server closes."""
    with socket.create_connection((gw.server.host, gw.server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                status = int(head.split()[1])
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (h.decode().partition(":") for h in head.split(b"\r\n")[1:])
                )
                if len(rest) >= int(headers.get("content-length", "0")):
                    return status, headers, rest
    raise AssertionError(f"no complete response: {data!r}")


def test_missing_content_length_is_411(gateway: Gateway) -> None:
    status, _, body = raw_exchange(
        gateway, b"POST /v1/events/ralph HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 411
    assert json.loads(body)["error"] == "Content-Length is required"


def test_empty_body_is_400(gateway: Gateway) -> None:
    resp = gateway.post("ralph", "")
    assert resp.status == 400
    assert "empty" in resp.json()["error"]
    assert gateway.post("ralph", "\n \n", content_type=NDJSON).status == 400


def test_expect_continue_is_refused_before_the_body(make: GatewayFactory) -> None:
    gw = make(gateway={"max_body_bytes": 4096, "token": TOKEN})
    head = "POST /v1/events/ralph HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    status, headers, _ = raw_exchange(gw, f"{head}Content-Length: 10\r\n\r\n".encode())
    assert status == 401
    assert headers["connection"] == "close"
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    status, _, _ = raw_exchange(gw, f"{head}{auth}Content-Length: 99999\r\n\r\n".encode())
    assert status == 413
    status, _, _ = raw_exchange(gw, f"{head}{auth}Content-Length: 10\r\n\r\n".encode())
    assert status == 100


# --- authentication -----------------------------------------------------------------------


def test_token_required_when_configured(make: GatewayFactory, unique: str) -> None:
    gw = make(gateway={"token": TOKEN})
    body = json.dumps(event("vscode", "session_started", session_id=unique))

    missing = gw.post("vscode", body)
    assert missing.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in missing.json()["error"]

    wrong = gw.post("vscode", body, token=TOKEN + "x")
    assert wrong.status == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in wrong.body.decode()
    assert gw.post("vscode", body, token="").status == 401
    basic = gw.request("POST", "/v1/events/vscode", body, {"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401

    right = gw.post("vscode", body, token=TOKEN)
    assert right.status == 202, right.body
    (event_id,) = right.json()["event_ids"]
    assert len(on_topic(gw, "vscode", {event_id})) == 1

    # Unknown sources do not answer before authentication.
    assert gw.post("emacs", body).status == 401
    # Health and metrics stay open.
    assert gw.request("GET", "/healthz").status == 200
    assert gw.request("GET", "/metrics").status == 200


def test_no_token_configured_is_open(gateway: Gateway) -> None:
    body = json.dumps(event("aidb", "query"))
    assert gateway.post("aidb", body).status == 202
    assert gateway.post("aidb", body, token="anything").status == 202


# --- connections, health, metrics ---------------------------------------------------------


def test_keep_alive_across_accepted_rejected_and_refused_requests(make: GatewayFactory) -> None:
    gw = make(gateway={"token": TOKEN})
    conn = gw.connect()
    good = json.dumps(event("ralph", "task_submitted"))
    statuses = [
        gw.post("ralph", good, token=TOKEN, conn=conn).status,
        gw.post("ralph", lines(good, "{bad"), token=TOKEN, conn=conn).status,
        gw.post("ralph", good, conn=conn).status,  # 401: the small body is read past
        gw.post("emacs", good, token=TOKEN, conn=conn).status,
        gw.request("GET", "/healthz", conn=conn).status,
    ]
    sock = conn.sock
    assert sock is not None
    statuses.append(gw.post("ralph", good, token=TOKEN, conn=conn).status)
    assert statuses == [202, 422, 401, 404, 200, 202]
    assert conn.sock is sock  # one connection served them all
    conn.close()


def test_healthz(gateway: Gateway) -> None:
    resp = gateway.request("GET", "/healthz")
    assert resp.status == 200
    assert resp.json() == {"status": "ok", "spooling": False, "spooled": 0}


def test_an_access_line_per_request_and_a_periodic_summary(
    make: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "learnstream.gateway")
    gw = make(summary_interval_s=0.2)
    gw.post("hybrid", lines(event("hybrid", "dataset_updated"), "nope"))
    gw.request("GET", "/v1/nowhere")
    flushed(gw)

    def summaries() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "learnstream.gateway" and r.getMessage().startswith("gateway: requests")
        ]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("accepted 1 (+1)" in x for x in summaries()):
        time.sleep(0.1)
    access = [r.getMessage() for r in caplog.records if r.name == "learnstream.gateway.access"]
    assert any('"POST /v1/events/hybrid" 422 ' in line for line in access), access
    assert any('"GET /v1/nowhere" 404 ' in line for line in access), access
    assert all(line.startswith("127.0.0.1 ") and line.endswith("ms") for line in access)
    busy = [x for x in summaries() if "events accepted 1 (+1)" in x]
    assert busy and "events rejected 1 (+1)" in busy[0], summaries()


def test_metrics_show_counters_that_moved(gateway: Gateway) -> None:
    gateway.post("hybrid", json.dumps(event("hybrid", "dataset_updated")))
    gateway.post("hybrid", lines(event("hybrid", "dataset_updated"), "nope"))
    gateway.post("emacs", "{}")
    flushed(gateway)

    resp = gateway.request("GET", "/metrics")

    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.body.decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("learnstream_gateway_requests_total", route="events", code="202") == 1
    assert value("learnstream_gateway_requests_total", route="events", code="422") == 1
    assert value("learnstream_gateway_requests_total", route="events", code="404") == 1
    assert value("learnstream_gateway_events_accepted_total", source="hybrid") == 2
    assert (
        value("learnstream_gateway_events_rejected_total", source="hybrid", kind="malformed") == 1
    )
    assert value("learnstream_gateway_request_seconds_count", route="events") == 3
    assert value("learnstream_producer_emitted_total", source="hybrid") == 2
    # Delivered counts records, the dead letter included.
    assert value("learnstream_producer_delivered_total", source="hybrid") >= 2
    assert value("learnstream_producer_dead_lettered_total", source="hybrid", stage="gateway") == 1


# --- the command line ---------------------------------------------------------------------


def test_cli_gateway_serves_until_sigterm(kafka_broker: BrokerUnderTest, unique: str) -> None:
    port = free_port()
    env = {**os.environ, "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers}
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "gateway did not start"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                probe = conn.getresponse()
                probe.read()
                assert probe.status == 200
                conn.close()
                break
            except OSError:
                time.sleep(0.1)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        data = event("ralph", "task_submitted", task_id=unique)
        conn.request("POST", "/v1/events/ralph", json.dumps(data))
        resp = conn.getresponse()
        assert resp.status == 202
        (event_id,) = json.loads(resp.read())["event_ids"]
        conn.close()

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"gateway listening on http://127.0.0.1:{port}" in out
    assert "Traceback" not in out, out
    got = consume(
        kafka_broker.bootstrap_servers,
        ["telemetry.ralph"],
        keep=lambda r: r.headers.get("event_id", b"").decode() == event_id,
        until=lambda kept: len(kept) >= 1,
        timeout=60,
    )
    assert len(got) == 1, out


def test_slow_and_unauthenticated_clients_cannot_lock_out_authenticated_ones(
    make: GatewayFactory, unique: str
) -> None:
    """A slowloris at the default connection limit (512): 700 clients trickle a header byte
    every 0.5 s and reconnect when cut off. Authenticated POSTs still get through, and slow
    clients are cut off at the request deadline."""
    gw = make(gateway={"token": "s3cret", "request_timeout_s": 2.0})
    address = (gw.server.host, gw.server.port)
    stop = threading.Event()
    cut: list[float] = []

    def open_slow() -> tuple[socket.socket, float]:
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(b"POST /v1/events/aidb HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        return sock, time.monotonic()

    def attacker() -> None:
        clients = [open_slow() for _ in range(700)]
        while not stop.wait(0.5):
            for n, (sock, opened) in enumerate(clients):
                try:
                    sock.send(b"X")
                except OSError:  # cut off by the gateway: come back
                    cut.append(time.monotonic() - opened)
                    sock.close()
                    with contextlib.suppress(OSError):
                        clients[n] = open_slow()
        for sock, _ in clients:
            sock.close()

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    try:
        time.sleep(3.0)  # every slot is taken by now
        answered = []
        for n in range(10):
            started = time.monotonic()
            body = json.dumps(event("aidb", "query", session_id=unique, query=f"q{n}"))
            resp = gw.post("aidb", body, token="s3cret")
            answered.append((resp.status, round(time.monotonic() - started, 2)))
        unauth = gw.post("aidb", body)
    finally:
        stop.set()
        thread.join(30)
    assert [status for status, _ in answered] == [202] * 10, answered
    assert max(took for _, took in answered) < 3.0, answered
    assert unauth.status == 401
    assert cut and sorted(cut)[len(cut) // 2] < 2.0 + 1.0, sorted(cut)[-5:]
    assert gw.sample("learnstream_gateway_connections_evicted_total") > 0


def test_openapi_document_lists_the_endpoints(make: GatewayFactory) -> None:
    gw = make(gateway={"token": TOKEN})
    resp = gw.request("GET", "/openapi.json")  # open, like /healthz
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/events/{source}", "/healthz", "/metrics", "/openapi.json"}
    post = doc["paths"]["/v1/events/{source}"]["post"]
    assert set(doc["paths"]["/v1/events/{source}"]) == {"post"}
    assert {"202", "422", "401", "413"} <= set(post["responses"])
    source = next(p for p in post["parameters"] if p["name"] == "source")
    assert sorted(source["schema"]["enum"]) == sorted(s.value for s in Source)
    assert post["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert gw.request("POST", "/openapi.json", "{}").status == 405


def test_idle_connections_are_closed_after_the_idle_timeout(make: GatewayFactory) -> None:
    gw = make(gateway={"idle_timeout_s": 1.0})
    with socket.create_connection((gw.server.host, gw.server.port), timeout=10) as sock:
        assert sock.recv(1) == b""  # closed by the gateway, never a byte sent
    conn = gw.connect()
    assert gw.request("GET", "/healthz", conn=conn).status == 200
    assert conn.sock is not None
    conn.sock.settimeout(10)
    assert conn.sock.recv(1) == b""  # a kept-alive connection too, once idle
    conn.close()
