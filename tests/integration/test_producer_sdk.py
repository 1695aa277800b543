"""The producer SDK against the dev broker: delivery, keys and headers, spool, restarts."""

from __future__ import annotations

import base64
import json
import logging
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from learnstream.core.settings import load_settings
from schemas import Source, parse_event
from schemas.events.ralph import RalphEvent
from streams.producers import TelemetryProducer
from tests.integration.conftest import BrokerUnderTest, DevBrokerProcess
from tests.integration.kafka_helpers import Record, consume
from tests.unit.events import CASES, event

pytestmark = pytest.mark.integration

DEAD = "127.0.0.1:1"  # nothing listens there: connection refused


def _settings(bootstrap: str, tmp_path: Path, **producer: object):
    return load_settings(
        data_dir=tmp_path / "data",
        kafka={"bootstrap_servers": bootstrap},
        producer={"delivery_timeout_ms": 1500, **producer},
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _wait(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _by_id(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[r.headers["event_id"].decode()].append(r)
    return out


def test_every_source_and_type_arrives_with_key_headers_and_value(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    sent: dict[str, tuple[str, str, dict]] = {}
    with TelemetryProducer(
        settings=_settings(kafka_broker.bootstrap_servers, tmp_path), registry=registry
    ) as producer:
        for source, event_type in CASES:
            data = event(source, event_type, extra_field={"kept": True})
            # Half as dicts, half as validated models: both paths must behave the same.
            if len(sent) % 2:
                event_id = producer.emit(data, source=source)
            else:
                event_id = producer.emit(parse_event(source, data))
            sent[event_id] = (source, event_type, data)
        assert producer.flush(15) == 0

    got = consume(
        kafka_broker.bootstrap_servers,
        [f"telemetry.{s.value}" for s in Source],
        keep=lambda r: r.headers.get("event_id", b"").decode() in sent,
        until=lambda kept: len(kept) >= len(sent),
        settle=1.0,
    )
    by_id = _by_id(got)
    assert set(by_id) == set(sent)
    for event_id, (source, event_type, _data) in sent.items():
        [rec] = by_id[event_id]
        assert rec.topic == f"telemetry.{source}"
        assert rec.headers["source"] == source.encode()
        assert rec.headers["event_type"] == event_type.encode()
        assert rec.headers["schema_version"] == b"1"
        assert rec.headers["content-type"] == b"application/json"
        value = rec.json()
        assert value["event_id"] == event_id
        assert value.get("event_type", value.get("event")) == event_type
        assert value["extra_field"] == {"kept": True}
        parsed = parse_event(source, rec.value)
        assert parsed.event_type == event_type
        assert rec.key == parsed.record_key().encode()
    assert _value(registry, "learnstream_producer_delivered_total", source="ralph") == 7
    assert _value(registry, "learnstream_producer_emitted_total", source="aidb") == 7


def test_invalid_event_is_dead_lettered_not_raised(
    kafka_broker: BrokerUnderTest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    bad = event("ralph", "task_completed", iteration="three")
    with (
        TelemetryProducer(
            "ralph", _settings(kafka_broker.bootstrap_servers, tmp_path), registry=registry
        ) as producer,
        caplog.at_level(logging.WARNING),
    ):
        event_id = producer.emit(bad)
        assert producer.flush(15) == 0
    assert "invalid ralph event dead-lettered" in caplog.text
    got = consume(
        kafka_broker.bootstrap_servers,
        ["telemetry.dlq"],
        keep=lambda r: r.json().get("event_id") == event_id,
        until=lambda kept: len(kept) >= 1,
    )
    assert len(got) == 1
    letter = got[0].json()
    assert letter["source"] == "ralph"
    assert letter["stage"] == "sdk"
    assert "field 'iteration'" in letter["error"]
    assert json.loads(base64.b64decode(letter["original_b64"]))["iteration"] == "three"
    assert (
        _value(registry, "learnstream_producer_dead_lettered_total", source="ralph", stage="sdk")
        == 1
    )
    # A delivered dead letter counts under its event's source.
    assert _value(registry, "learnstream_producer_delivered_total", source="ralph") == 1
    assert _value(registry, "learnstream_producer_delivered_total", source="unknown") == 0


def test_broker_down_at_start_spools_and_a_restart_resends_in_order(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    down = TelemetryProducer("ralph", _settings(DEAD, tmp_path), registry=registry)
    first = [
        down.emit(event("ralph", "iteration_started", task_id=f"t{i % 3}", iteration=i))
        for i in range(30)
    ]
    t0 = time.monotonic()
    assert down.flush(20) == 0  # all durably spooled
    assert time.monotonic() - t0 < 10  # emit never waited on the network; flush waited ~timeout
    assert down.spooled == 30
    assert _value(registry, "learnstream_producer_spooled_total", source="ralph") == 30
    assert _value(registry, "learnstream_producer_spool_records", spool="sdk-ralph") == 30
    down.close()

    # The spool survives the restart and is sent before anything new.
    up = TelemetryProducer(
        "ralph", _settings(kafka_broker.bootstrap_servers, tmp_path), registry=registry
    )
    assert up.spooled == 30
    second = [
        up.emit(event("ralph", "iteration_started", task_id=f"t{i % 3}", iteration=i))
        for i in range(30, 45)
    ]
    assert up.flush(20) == 0
    assert _wait(lambda: up.spooled == 0)
    up.close()

    ids = set(first + second)
    got = consume(
        kafka_broker.bootstrap_servers,
        ["telemetry.ralph"],
        keep=lambda r: r.headers.get("event_id", b"").decode() in ids,
        until=lambda kept: len(kept) >= len(ids),
        settle=1.0,
    )
    assert sorted(r.headers["event_id"].decode() for r in got) == sorted(ids)  # no loss, no dup
    for task in ("t0", "t1", "t2"):
        iterations = [r.json()["iteration"] for r in got if r.json()["task_id"] == task]
        assert iterations == sorted(iterations) and len(iterations) == 15


def test_broker_stall_during_a_run_loses_nothing(tmp_path: Path) -> None:
    """The broker freezes (SIGSTOP) past the delivery timeout, then comes back (SIGCONT)."""
    broker = DevBrokerProcess(tmp_path / "broker")
    registry = CollectorRegistry()
    producer = TelemetryProducer(
        "aidb", _settings(broker.bootstrap_servers, tmp_path), registry=registry
    )
    ids: list[str] = []

    def emit(n: int) -> None:
        for _ in range(n):
            i = len(ids)
            ids.append(
                producer.emit(event("aidb", "query", session_id=f"s{i % 4}", query=f"question {i}"))
            )

    try:
        emit(40)
        assert producer.flush(15) == 0
        broker.proc.send_signal(signal.SIGSTOP)
        emit(40)
        assert _wait(lambda: producer.spooling, 15), "did not start spooling"
        emit(40)
        assert producer.flush(15) == 0
        assert producer.spooled > 0
        broker.proc.send_signal(signal.SIGCONT)
        assert _wait(lambda: producer.spooled == 0 and not producer.spooling, 60)
        assert producer.flush(15) == 0
        wanted = set(ids)
        got = consume(
            broker.bootstrap_servers,
            ["telemetry.aidb"],
            keep=lambda r: r.headers.get("event_id", b"").decode() in wanted,
            until=lambda kept: len({r.headers["event_id"] for r in kept}) >= len(wanted),
            settle=2.0,
        )
    finally:
        producer.close()
        broker.proc.send_signal(signal.SIGCONT)
        broker.stop()
    by_id = _by_id(got)
    assert set(by_id) == set(ids)  # nothing lost
    duplicates = len(got) - len(by_id)
    # Only messages in flight when the broker froze may arrive twice, and each is counted.
    assert duplicates <= _value(
        registry, "learnstream_producer_possibly_duplicated_total", source="aidb"
    )
    for s in range(4):  # per key, first arrivals keep the emit order
        first_seen = []
        for r in got:
            q = r.json()["query"]
            if r.key == f"s{s}".encode() and q not in first_seen:
                first_seen.append(q)
        assert first_seen == [f"question {i}" for i in range(len(ids)) if i % 4 == s]


def test_records_failed_in_librdkafka_are_spooled_with_their_exact_headers(
    tmp_path: Path,
) -> None:
    """Delivery reports carry no headers; the SDK rebuilds them, and keeps the emit order."""
    settings = _settings(DEAD, tmp_path)
    producer = TelemetryProducer("ralph", settings, registry=CollectorRegistry())
    # Ralph names the type field "event"; the record header still says event_type.
    submitted = producer.emit(
        {
            "event": "task_submitted",
            "task_id": "t9",
            "prompt": "p",
            "timestamp": "2026-11-02T09:14:05Z",
        }
    )
    model = parse_event("aidb", json.dumps(event("aidb", "completion", session_id="s7")))
    completion = producer.emit(model)
    producer.dead_letter(b"{not json", "malformed JSON", source="ralph")
    # A tool's own model of a type the schemas do not list is sent as it is.
    custom = producer.emit(
        RalphEvent(event_type="custom_step", task_id="t3", timestamp="2026-11-02T09:14:05Z")
    )
    assert producer.flush(20) == 0
    producer.close()

    from streams.producers.spool import Spool

    spool = Spool(settings.spool_dir / "sdk-ralph", settings.producer.spool_max_bytes)
    records = [rec for _, rec in spool.peek(10)]
    spool.close()

    def headers(source: str, event_type: str, event_id: str | None) -> list[tuple[str, bytes]]:
        out = [
            ("source", source.encode()),
            ("event_type", event_type.encode()),
            ("schema_version", b"1"),
            ("content-type", b"application/json"),
        ]
        return out + ([("event_id", event_id.encode())] if event_id else [])

    topics = ["telemetry.ralph", "telemetry.aidb", "telemetry.dlq", "telemetry.ralph"]
    assert [r.topic for r in records] == topics
    ralph, aidb, letter, own = records
    assert own.headers == headers("ralph", "custom_step", custom)
    assert (own.key, own.event_id, own.source) == (b"t3", custom, "ralph")
    assert ralph.headers == headers("ralph", "task_submitted", submitted)
    assert (ralph.key, ralph.event_id, ralph.source) == (b"t9", submitted, "ralph")
    assert aidb.headers == headers("aidb", "completion", completion)
    assert (aidb.key, aidb.event_id, aidb.source) == (b"s7", completion, "aidb")
    assert letter.headers == headers("ralph", "dead_letter", None)
    assert letter.key == letter.event_id.encode() and letter.source == "ralph"
    assert json.loads(letter.value)["error"] == "malformed JSON"


def test_full_spool_keeps_the_oldest_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    settings = _settings(DEAD, tmp_path, spool_max_bytes=4096)
    with caplog.at_level(logging.ERROR):
        producer = TelemetryProducer("vscode", settings, registry=registry)
        ids = [
            producer.emit(event("vscode", "session_started", session_id=f"v{i}")) for i in range(40)
        ]
        producer.close()
    kept = _value(registry, "learnstream_producer_spooled_total", source="vscode")
    rejected = _value(registry, "learnstream_producer_spool_rejected_total", source="vscode")
    assert kept > 0 and rejected > 0 and kept + rejected == 40
    assert "spool full" in caplog.text and "NOT kept" in caplog.text
    from streams.producers.spool import Spool

    spool = Spool(settings.spool_dir / "sdk-vscode", 4096)
    assert [rec.event_id for _, rec in spool.peek(100)] == ids[: int(kept)]  # the oldest
    spool.close()


def test_sdk_imports_without_the_ml_stack() -> None:
    code = (
        "import sys; import streams.producers; from streams.producers import "
        "TelemetryProducer; heavy = ['torch', 'transformers', 'faust', 'qdrant_client', "
        "'sentence_transformers', 'psycopg', 'aiokafka']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_oversized_event_is_dead_lettered_with_its_size(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        max_event_bytes=4096,
        kafka={"bootstrap_servers": kafka_broker.bootstrap_servers},
    )
    big = event("aidb", "completion", response="x" * 10_000)
    with TelemetryProducer("aidb", settings, registry=CollectorRegistry()) as producer:
        event_id = producer.emit(big)
        ok_id = producer.emit(event("aidb", "completion", response="fine"))
        assert producer.flush(15) == 0
    got = consume(
        kafka_broker.bootstrap_servers,
        ["telemetry.dlq", "telemetry.aidb"],
        keep=lambda r: (
            event_id in r.value.decode(errors="replace")
            or r.key == ok_id.encode()
            or r.headers.get("event_id") == ok_id.encode()
        ),
        until=lambda kept: len(kept) >= 2,
    )
    letters = [r.json() for r in got if r.topic == "telemetry.dlq"]
    assert len(letters) == 1
    assert letters[0]["error_kind"] == "oversized"
    assert "over the limit of 4096 bytes" in letters[0]["error"]
    assert json.loads(base64.b64decode(letters[0]["original_b64"]))["response"] == "x" * 10_000
    assert [r.topic for r in got if r.topic == "telemetry.aidb"] == ["telemetry.aidb"]


def _deep(levels: int) -> dict[str, object]:
    node: dict[str, object] = {"leaf": 1}
    for _ in range(levels):
        node = {"n": node}
    return node


def test_hostile_emits_become_dead_letters_and_the_worker_goes_on(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    """Deep nesting, unstorable text, not-a-dict: each a dead letter with its reason; the valid
    events emitted between them all arrive, and close() is quick (the worker thread lives)."""
    registry = CollectorRegistry()
    bootstrap = kafka_broker.bootstrap_servers
    hostile: list[tuple[object, str]] = [
        (event("vscode", "completion", context=_deep(5000)), "nests deeper than 64 levels"),
        (event("vscode", "completion", context=_deep(300)), "nests deeper than 64 levels"),
        (event("vscode", "completion", note="bad \ud800 text"), "lone surrogate (\\ud800)"),
        (event("vscode", "completion", response="a\x00b"), "NUL character"),
        (b'{"event_type": "completion"}', "not bytes"),
        ("a string", "not str"),
        ([1, 2, 3], "not list"),
    ]
    with TelemetryProducer("vscode", _settings(bootstrap, tmp_path), registry=registry) as p:
        ids, valid = [], []
        for payload, _ in hostile:
            valid.append(p.emit(event("vscode", "completion", response="fine")))
            ids.append(p.emit(payload))  # type: ignore[arg-type]
        valid.append(p.emit(event("vscode", "completion", response="last")))
        assert p.flush(15) == 0
        started = time.monotonic()
    assert time.monotonic() - started < 10  # close() did not wait on a dead worker
    want = set(ids) | set(valid)
    got = consume(
        bootstrap,
        ["telemetry.dlq", "telemetry.vscode"],
        keep=lambda r: (
            (r.headers.get("event_id") or b"").decode() in want
            or (r.topic == "telemetry.dlq" and r.json().get("event_id") in want)
        ),
        until=lambda kept: len(kept) >= len(want),
    )
    arrived = {r.headers["event_id"].decode() for r in got if r.topic == "telemetry.vscode"}
    assert arrived == set(valid)
    letters = {r.json()["event_id"]: r.json() for r in got if r.topic == "telemetry.dlq"}
    assert set(letters) == set(ids)
    for event_id, (_, reason) in zip(ids, hostile, strict=True):
        letter = letters[event_id]
        assert reason.removeprefix("not ") in letter["error"], letter["error"]
        assert letter["original_size"] == len(base64.b64decode(letter["original_b64"]))


def test_events_are_redacted_before_they_are_sent_unless_turned_off(
    kafka_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    from tests.secrets_corpus import SECRETS

    bootstrap = kafka_broker.bootstrap_servers
    registry = CollectorRegistry()
    with TelemetryProducer("vscode", _settings(bootstrap, tmp_path), registry=registry) as p:
        ids = {
            p.emit(event("vscode", "completion", response=text, context={"env": text}))
            for text, _, _ in SECRETS
        }
        assert p.flush(15) == 0
    plain = load_settings(
        data_dir=tmp_path / "plain",
        kafka={"bootstrap_servers": bootstrap},
        producer={"redact": False},
    )
    with TelemetryProducer("vscode", plain, registry=CollectorRegistry()) as p:
        kept = p.emit(event("vscode", "completion", response=SECRETS[0][0]))
        assert p.flush(15) == 0
    got = consume(
        bootstrap,
        ["telemetry.vscode"],
        keep=lambda r: (r.headers.get("event_id") or b"").decode() in ids | {kept},
        until=lambda k: len(k) >= len(ids) + 1,
    )
    by_id = {r.headers["event_id"].decode(): r.value.decode() for r in got}
    assert set(by_id) == ids | {kept}
    for event_id in ids:
        value = by_id[event_id]
        assert "[REDACTED:" in value and not any(s in value for _, s, _ in SECRETS), value
        assert parse_event("vscode", value).event_id == event_id  # still a valid event
    assert SECRETS[0][1] in by_id[kept]
    assert _value(registry, "learnstream_producer_secrets_redacted_total", source="vscode",
                  kind="private_key") == 2  # fmt: skip
