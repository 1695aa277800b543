"""The main job on embedded defaults: what `learnstream demo` runs."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learnstream.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class DemoSummary:
    """What the demo published and read back."""

    sent: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    on_topics: Counter[str] = field(default_factory=Counter)
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: int = 0


@contextmanager
def dev_broker_if_needed(settings: Settings, echo: Callable[[str], None]) -> Iterator[Settings]:
    """Yield settings pointing at a broker: the configured one, or an in-process dev broker."""
    if settings.kafka.bootstrap_servers:
        echo(f"broker: {settings.kafka.bootstrap_servers} (configured)")
        yield settings
        return
    from learnstream.devbroker import DevBroker, remove_record, write_record

    broker = DevBroker()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            broker.poll(0.2)

    poller = threading.Thread(target=serve, daemon=True)
    poller.start()
    write_record(settings.broker_file, broker.bootstrap_servers, 1)
    echo(f"broker: dev broker on {broker.bootstrap_servers} (in memory, stops with the demo)")
    try:
        yield settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap_servers}
                )
            }
        )
    finally:
        stop.set()
        poller.join()
        remove_record(settings.broker_file)
        broker.close()


def _read_back(
    settings: Settings,
    ids: set[str],
    dlq_files: set[str],
    summary: DemoSummary,
    timeout: float = 30.0,
) -> None:
    """Consume the telemetry topics and the DLQ until every published record was seen."""
    import json

    from confluent_kafka import Consumer

    from learnstream.kafka import client_config
    from schemas.topics import DLQ, TELEMETRY

    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"learnstream-demo-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([t.name for t in TELEMETRY.values()] + [DLQ.name])
    want = len(ids) + sum(summary.invalid.values())
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            raw_headers: list[tuple[str, Any]] = list(msg.headers() or [])  # type: ignore[arg-type]
            headers = {
                k: v.decode() if isinstance(v, bytes) else str(v or "") for k, v in raw_headers
            }
            if msg.topic() == DLQ.name:
                letter = json.loads(msg.value() or b"{}")
                mark = f"dlq:{letter.get('file')}:{letter.get('line_number')}"
                if letter.get("file") in dlq_files and mark not in seen:
                    seen.add(mark)
                    summary.dead_letters += 1
                continue
            event_id = headers.get("event_id", "")
            if event_id in ids and event_id not in seen:
                seen.add(event_id)
                source = headers["source"]
                summary.on_topics[source] += 1
                summary.by_type[(source, headers["event_type"])] += 1
    finally:
        consumer.close()


def run_demo(
    settings: Settings,
    *,
    examples: Path | None = None,
    schemas_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> DemoSummary:
    """Broker, schemas, sample telemetry through the producer SDK and back; returns a summary."""
    from learnstream.schema_export import export_schemas
    from schemas import Source
    from streams.producers.sdk import TelemetryProducer
    from streams.producers.sender import read_lines, send_lines

    examples = examples or EXAMPLES
    out = schemas_dir or settings.data_dir / "schemas"
    written = export_schemas(out)
    echo(f"schemas: {len(written)} JSON Schemas in {out}")
    summary = DemoSummary()
    with dev_broker_if_needed(settings, echo) as live:
        ids: set[str] = set()
        files: set[str] = set()
        with TelemetryProducer(settings=live, name="demo", stage="send") as producer:
            for source in Source:
                path = examples / f"{source.value}-events.jsonl"
                if not path.exists():
                    echo(f"{source.value}: no {path}")
                    continue
                files.add(str(path))
                with open(path, "rb") as f:
                    report = send_lines(
                        producer,
                        source,
                        read_lines(f),
                        origin=str(path),
                        deterministic_ids=True,
                        max_bytes=live.max_event_bytes,
                    )
                summary.sent[source.value] = report.sent
                summary.invalid[source.value] = report.invalid
            producer.flush(60)
            ids = _collect_ids(examples, files)
        _read_back(live, ids, files, summary)
    echo("")
    echo(f"{'source':8} {'sent':>5} {'on topic':>8} {'invalid→dlq':>11}  event types")
    for source in Source:
        s = source.value
        types = ", ".join(f"{t} {n}" for (src, t), n in sorted(summary.by_type.items()) if src == s)
        echo(
            f"{s:8} {summary.sent[s]:>5} {summary.on_topics[s]:>8} {summary.invalid[s]:>11}  "
            f"{types}"
        )
    echo(f"dead letters read back from telemetry.dlq: {summary.dead_letters}")
    echo("")
    echo(
        "Next: run `learnstream broker` in one terminal and `learnstream produce tail "
        "--source ralph --path ralph-events.jsonl` in another; inspect with "
        "`learnstream topics describe` or `rpk topic consume telemetry.ralph`."
    )
    return summary


def _collect_ids(examples: Path, files: set[str]) -> set[str]:
    """The deterministic ids the sender gave the example files' valid lines."""
    from schemas import EventError, parse_event
    from streams.producers.ids import derive_event_id, file_identity
    from streams.producers.sender import read_lines

    ids: set[str] = set()
    for name in files:
        path = Path(name)
        source = path.name.split("-", 1)[0]
        with open(path, "rb") as f:
            identity = None
            for _, offset, line in read_lines(f):
                identity = identity or file_identity(line)
                if not line.strip():
                    continue
                try:
                    event = parse_event(source, line)
                except EventError:
                    continue
                ids.add(event.event_id or derive_event_id(source, identity, offset))
    return ids
