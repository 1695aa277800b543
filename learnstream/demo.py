"""The main job on embedded defaults: what `learnstream demo` runs."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from learnstream.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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


def run_demo(
    settings: Settings,
    *,
    examples: Path | None = None,
    schemas_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Counter[str]]:
    """Broker, topics, schema export, sample telemetry validated; returns counts per source."""
    from learnstream.schema_export import export_schemas
    from schemas import EventError, Source, parse_event

    examples = examples or EXAMPLES
    out = schemas_dir or settings.data_dir / "schemas"
    written = export_schemas(out)
    echo(f"schemas: {len(written)} JSON Schemas in {out}")
    counts: dict[str, Counter[str]] = {}
    with dev_broker_if_needed(settings, echo):
        for source in Source:
            path = examples / f"{source.value}-events.jsonl"
            tally: Counter[str] = Counter()
            if path.exists():
                for line in path.read_bytes().splitlines():
                    if not line.strip():
                        continue
                    try:
                        parse_event(source, line, max_bytes=settings.max_event_bytes)
                        tally["valid"] += 1
                    except EventError:
                        tally["invalid"] += 1
            counts[source.value] = tally
            echo(
                f"{source.value:7} {tally['valid']:4} valid  {tally['invalid']:3} invalid  "
                f"({path.name})"
            )
    return counts
