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
def dev_broker_if_needed(
    settings: Settings, echo: Callable[[str], None], *, kafka: bool = False
) -> Iterator[Settings]:
    """Yield settings pointing at a broker: the configured one, else an in-process dev broker,
    or with ``kafka`` a real local Kafka (`learnstream.localkafka`) whose data stays in the
    data directory."""
    if settings.kafka.bootstrap_servers:
        echo(f"broker: {settings.kafka.bootstrap_servers} (configured)")
        yield settings
        return
    if kafka:
        from learnstream.localkafka import LocalKafka

        echo("broker: starting a local Apache Kafka (first run: Maven fetches its jars) ...")
        with LocalKafka(settings.data_dir, record_file=settings.broker_file).start() as local:
            echo(f"broker: local Kafka on {local.bootstrap_servers} (data in {local.root})")
            yield settings.model_copy(
                update={
                    "kafka": settings.kafka.model_copy(
                        update={"bootstrap_servers": local.bootstrap_servers}
                    )
                }
            )
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


DEMO_TRIGGERS = {  # enough for the sample files to fire one training run
    "LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD": "15",
    "LEARNSTREAM_TRIGGERS__MIN_DATASET_SIZE": "15",
}
DEMO_TRAINING = {  # a short run that fits the tiny stand-in model
    "LEARNSTREAM_TRAINING__MAX_STEPS": "40",
    "LEARNSTREAM_TRAINING__LEARNING_RATE": "0.005",
    "LEARNSTREAM_TRAINING__MIN_EVAL_EXAMPLES": "2",
    "LEARNSTREAM_TRAINING__BATCH_SIZE": "4",
    "LEARNSTREAM_TRAINING__LORA_RANK": "8",
}


@dataclass
class PipelineTally:
    """What the demo read back from the pipeline's topics."""

    scored: dict[str, Any] = field(default_factory=dict)
    candidates: set[str] = field(default_factory=set)
    learned: dict[tuple[str, str], str] = field(default_factory=dict)
    dead_letters: set[tuple[int, int]] = field(default_factory=set)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


class Children:
    """The pipeline's processes (worker, sink, trainer), each logging to a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, Any] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        """Start ``learnstream <args>`` as ``name``."""
        import subprocess
        import sys

        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = (proc, log)

    def check(self) -> None:
        """Fail clearly if a child died."""
        for name, (proc, _) in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"`learnstream {name}` exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every child, then wait (kill after 60 s)."""
        import signal
        import subprocess

        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()


def _child_env(settings: Settings, base_model: str, web_port: int) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(
        {
            "LEARNSTREAM_DATA_DIR": str(settings.data_dir),
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers),
            "LEARNSTREAM_BASE_MODEL": base_model,
            "LEARNSTREAM_WORKER__WEB_PORT": str(web_port),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    for name, value in {**DEMO_TRIGGERS, **DEMO_TRAINING}.items():
        env.setdefault(name, value)
    return env


def _tally(
    settings: Settings,
    ids: set[str],
    children: Children,
    echo: Callable[[str], None],
    timeout: float,
) -> PipelineTally:
    """Read the pipeline's topics until every event is scored and a training run reported."""
    import json

    from confluent_kafka import Consumer

    from learnstream.kafka import consumer_config
    from schemas.topics import (
        DLQ,
        INTERACTIONS_SCORED,
        PATTERNS_CANDIDATES,
        PATTERNS_LEARNED,
        TRAINING_RESULTS,
        TRAINING_TRIGGERS,
    )

    tally = PipelineTally()
    consumer = Consumer(
        consumer_config(
            settings,
            f"learnstream-demo-{uuid.uuid4().hex[:8]}",
            # topics appear as the loop runs; notice them quickly
            **{"topic.metadata.refresh.interval.ms": 1000},
        )
    )
    topics = (INTERACTIONS_SCORED, PATTERNS_CANDIDATES, PATTERNS_LEARNED, DLQ)
    consumer.subscribe([t.name for t in (*topics, TRAINING_TRIGGERS, TRAINING_RESULTS)])
    deadline = time.monotonic() + timeout
    reported = time.monotonic()
    try:
        while time.monotonic() < deadline:
            children.check()
            if len(tally.scored) >= len(ids) and tally.results:
                break
            if time.monotonic() - reported > 15:
                reported = time.monotonic()
                echo(
                    f"  ... scored {len(tally.scored)}/{len(ids)}, learned "
                    f"{len(tally.learned)}, triggers {len(tally.triggers)}, "
                    f"training results {len(tally.results)}"
                )
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            doc = json.loads(msg.value() or b"{}")
            topic = msg.topic()
            if topic == INTERACTIONS_SCORED.name and doc["interaction"]["event_id"] in ids:
                tally.scored[doc["interaction"]["event_id"]] = doc
            elif topic == PATTERNS_CANDIDATES.name:
                tally.candidates.add(doc["interaction"]["event_id"])
            elif topic == PATTERNS_LEARNED.name:  # a re-read after a rebalance counts once
                tally.learned[(doc["event_id"], doc["pattern"]["pattern_id"])] = doc["status"]
            elif topic == DLQ.name:
                tally.dead_letters.add((msg.partition() or 0, msg.offset() or 0))
            elif topic == TRAINING_TRIGGERS.name:
                tally.triggers[doc["trigger_id"]] = doc
            elif topic == TRAINING_RESULTS.name:
                tally.results[doc["trigger_id"]] = doc
    finally:
        consumer.close()
    return tally


def _wait_http(url: str, children: Children, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        children.check()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not answer on {url}") from None
            time.sleep(0.5)


def _postgres_summary(settings: Settings) -> list[tuple[Any, ...]]:
    from learnstream.postgres import connect, postgres_url

    with connect(postgres_url(settings)) as conn:
        return conn.execute(
            "SELECT source, count(*), count(score), round(avg(score)::numeric, 3), "
            "count(*) FILTER (WHERE high_value) FROM telemetry_events GROUP BY source "
            "ORDER BY source"
        ).fetchall()


def _histogram(scores: list[float]) -> str:
    bins = [0] * 5
    for value in scores:
        bins[min(4, int(value * 5))] += 1
    return "  ".join(f"{i / 5:.1f}-{(i + 1) / 5:.1f}: {n}" for i, n in enumerate(bins))


def run_demo(
    settings: Settings,
    *,
    examples: Path | None = None,
    schemas_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    timeout: float = 600.0,
    kafka: bool = False,
) -> DemoSummary:
    """The whole loop on embedded defaults; prints a summary and returns the publish counts.

    dev broker (in this process) -> sample telemetry through the producer SDK -> `learnstream
    worker` (score, extract, triggers), `sink` (embedded PostgreSQL) and `trainer` as child
    processes -> one training run of a tiny stand-in model (unless LEARNSTREAM_BASE_MODEL is
    set) -> summary.
    """
    import logging

    from learnstream.net import free_port
    from learnstream.schema_export import export_schemas

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    examples = examples or EXAMPLES
    out = schemas_dir or settings.data_dir / "schemas"
    written = export_schemas(out)
    echo(f"schemas: {len(written)} JSON Schemas in {out}")
    if "base_model" in settings.model_fields_set:
        base_model = settings.base_model
        echo(f"base model: {base_model} (LEARNSTREAM_BASE_MODEL)")
    else:
        from trainers.tiny import build_tiny_model

        base_model = str(build_tiny_model(settings.data_dir / "models" / "tiny"))
        echo(f"base model: a tiny causal LM built locally in {base_model}")
        echo("  (it stands in for the real one: set LEARNSTREAM_BASE_MODEL to a name or path)")
    summary = DemoSummary()
    with dev_broker_if_needed(settings, echo, kafka=kafka) as live:
        port = free_port()
        children = Children(_child_env(live, base_model, port), live.data_dir / "demo-logs")
        try:
            children.start("worker", "worker", "--loglevel", "warning")
            children.start("sink", "sink")
            children.start("trainer", "trainer")
            echo(f"started worker (http://127.0.0.1:{port}), sink, trainer; logs: {children.logs}")
            _wait_http(f"http://127.0.0.1:{port}/healthz", children, timeout=180)
            files = _publish(live, examples, summary, echo)
            ids = _collect_ids(examples, files)
            echo(f"published {sum(summary.sent.values())} events; waiting for the pipeline")
            tally = _tally(live, ids, children, echo, timeout)
            rows = _postgres_summary(live)
            deadline = time.monotonic() + 60
            while sum(r[1] for r in rows) < len(ids) and time.monotonic() < deadline:
                children.check()
                time.sleep(1)  # the sink writes in batches
                rows = _postgres_summary(live)
        finally:
            children.stop()
    for doc in tally.scored.values():
        src = doc["interaction"]["source"]
        summary.on_topics[src] += 1
        summary.by_type[(src, doc["interaction"]["event_type"])] += 1
    _print_summary(live, summary=summary, tally=tally, rows=rows, base_model=base_model, echo=echo)
    if not tally.results:
        raise RuntimeError(f"no training result within {timeout:.0f} s; see {children.logs}")
    return summary


def _publish(
    settings: Settings, examples: Path, summary: DemoSummary, echo: Callable[[str], None]
) -> set[str]:
    """Send every example file through the producer SDK; returns the files sent."""
    from schemas import Source
    from streams.producers.sdk import TelemetryProducer
    from streams.producers.sender import read_lines, send_lines

    live = settings
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
    return files


def _print_summary(
    settings: Settings,
    *,
    summary: DemoSummary,
    tally: PipelineTally,
    rows: list[tuple[Any, ...]],
    base_model: str,
    echo: Callable[[str], None],
) -> None:
    from extractors.dataset import stats
    from extractors.stage import dataset_path
    from schemas import Source

    echo("")
    echo(f"{'source':8} {'sent':>5} {'scored':>6} {'invalid→dlq':>11}  event types")
    for source in Source:
        s = source.value
        types = ", ".join(f"{t} {n}" for (src, t), n in sorted(summary.by_type.items()) if src == s)
        echo(
            f"{s:8} {summary.sent[s]:>5} {summary.on_topics[s]:>6} {summary.invalid[s]:>11}  "
            f"{types}"
        )
    scores = [d["score"] for d in tally.scored.values() if d.get("score") is not None]
    echo("")
    echo(f"value scores ({len(scores)} scored, {len(tally.scored) - len(scores)} lifecycle):")
    echo(f"  {_histogram(scores)}")
    echo(f"  high value (>= {settings.score.threshold}): {len(tally.candidates)} candidates")
    echo("PostgreSQL telemetry_events (source, rows, scored, mean score, high value):")
    for row in rows:
        echo(f"  {row[0]:8} {row[1]:>5} {row[2]:>6} {row[3]!s:>6} {row[4]:>5}")
    path = dataset_path(settings)
    data = stats(path).to_dict()
    learned = Counter(tally.learned.values())
    echo(
        f"patterns learned: {learned['new']} new, {learned['merged']} merged; "
        f"dataset {path}: {data.get('examples', data.get('lines'))} examples"
    )
    _print_gate(data.get("refusals") or {}, len(tally.candidates), echo)
    for t in tally.triggers.values():
        echo(f"training trigger {t['trigger_id'][:8]}: {', '.join(t['reasons'])} ({t['detail']})")
    for r in tally.results.values():
        m = r.get("metrics", {})
        losses = (
            f" [eval loss active {m['eval_loss_active']:.4f} -> candidate "
            f"{m['eval_loss_candidate']:.4f}]"
            if "eval_loss_active" in m and "eval_loss_candidate" in m
            else ""
        )
        echo(f"training result: {r['status'].upper()}: {r['reason']}{losses}")
    echo(f"dead letters: {len(tally.dead_letters)}")
    echo("")
    echo("Where to look: `learnstream topics describe`, `rpk topic consume interactions.scored`,")
    echo(f"  PostgreSQL table telemetry_events (embedded under {settings.postgres_dir}),")
    echo(f"  `learnstream adapters list --base-model {base_model}`, `learnstream dataset stats`,")
    echo("  `learnstream patterns top`, and /metrics on every process.")


def _print_gate(refusals: dict[str, Any], candidates: int, echo: Callable[[str], None]) -> None:
    """The substance gate's and the dataset balance's part, from the refusals log."""

    def by(counts: dict[str, int]) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in counts.items())

    refused = int(refusals.get("refused", 0))
    why = f" ({by(refusals.get('refused_by_reason') or {})})" if refused else ""
    echo(
        f"substance gate: {refused} of {candidates} candidates refused{why}, "
        f"{max(0, candidates - refused)} passed"
    )
    skipped = int(refusals.get("skipped", 0))
    if skipped:
        echo(f"  dataset balance: {skipped} examples skipped ({by(refusals['skipped_by_reason'])})")
    if refused or skipped:
        echo(f"  reasons and excerpts for review: {refusals.get('path')}")


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
