"""Scoring stage benchmark: the real worker on a broker (run by hand; figures go in the notes,
never into tests).

Each phase starts its own broker and `learnstream worker` (a subprocess with its own data dir
and app id; extract and triggers agents off, so only the `score` agent runs; Qdrant in local
mode under the worker's data dir), so no phase inherits another's interaction history. The
broker (bench/brokers.py) is a `learnstream broker` subprocess (the dev broker, default) or,
with ``--broker kafka``, a fresh local Apache Kafka per phase; ``--bootstrap`` runs every
phase on one existing cluster instead, each worker and reader starting at the end of the
topics (their groups' offsets are committed there first). The topics the score agent reads
and writes (``telemetry.*``, ``interactions.scored``, ``patterns.candidates``,
``telemetry.dlq``) are created up front with 4 partitions, as the dev broker makes them, so
both brokers give the agent the same partitions (on Kafka the worker then warns that the
registry wants more; it creates the other registry topics itself). Events are AIDB
`completion`s (~1 KB, like examples/aidb-events.jsonl) produced to `telemetry.aidb` with
confluent-kafka; `interactions.scored` is read back with a confluent-kafka consumer. Every
worker is warmed up with 64 events first.

a. Throughput: a backlog of N events with unique query texts; then (fresh worker) N events of
   which ``--repeat-share`` (0.8) repeat a text of the same burst. Scored events/s from the
   first to the last output record (record timestamps), for at most ``--phase-limit`` s.
   Before any worker starts, the bare model (`scorers.embeddings.Embedder`, batches of
   `LEARNSTREAM_SCORE__BATCH_SIZE`) encodes the same unique texts: ratio stage/bare (target
   >= 0.7 with unique texts).
b. Latency from produce to `interactions.scored` at ``--rate`` events/s for ``--duration`` s:
   p50/p99 to the worker's send (output record timestamp) and to receipt by our consumer
   (target p99 < 500 ms); then the worker's CPU while idle.
c. The same worker's resident memory (VmRSS, and the peak VmHWM) once ``--rss-after``
   events were produced to it (topped up with a burst; at most ``--rss-limit`` s); target
   < 1.5 GB.

    python bench/bench_score.py [--n 3000] [--repeat-share 0.8] [--rate 50] [--duration 60]
                                [--rss-after 10000] [--phase-limit 45] [--rss-limit 60]
                                [--phases abc] [--watermark on|off] [--horizon-ms MS]
                                [--fetch-max-wait-ms MS] [--qdrant-lookup] [--no-spinner]
                                [--broker mock|kafka] [--bootstrap HOST:PORT]

``--phases`` runs only some of a, b, c (``--phases b``: the latency run alone).
``--watermark off`` runs the workers without holding events for the watermark
(``LEARNSTREAM_SCORE__WATERMARK=false``; docs/replay-determinism.md), so a run with and one
without give the latency the watermark costs; ``--horizon-ms`` sets its arrival horizon.

The last three flags start the worker through a shim (this file) that changes one thing
inside the worker process, to measure a suggested package change without making it:
``--fetch-max-wait-ms`` sets the Faust worker consumer's fetch_max_wait_ms (Faust hard-codes
1500; the dev broker parks an empty fetch that long), ``--qdrant-lookup`` sends the
interaction-history searches to Qdrant local mode instead of the worker's in-memory
`HistoryIndex` (local mode's payload filter costs O(history) Python per search; this is how
the worker worked before the index), ``--no-spinner`` drops Faust's terminal spinner (which
sets the root logger to DEBUG when --worker-loglevel is warning or error).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import BrokerInfo, add_broker_arguments, broker_from_args, stop_process

from learnstream.core.net import free_port
from schemas.topics import DLQ, INTERACTIONS_SCORED, PATTERNS_CANDIDATES, TELEMETRY

ROOT = Path(__file__).resolve().parent.parent
SOURCE_TOPIC = "telemetry.aidb"
SCORED_TOPIC = "interactions.scored"
# What the score agent reads and writes: made up front with the dev broker's 4 partitions.
AGENT_TOPICS = [
    *(spec.name for spec in TELEMETRY.values()),
    INTERACTIONS_SCORED.name,
    PATTERNS_CANDIDATES.name,
    DLQ.name,
]

ACTIONS = [
    "configure",
    "debug",
    "deploy",
    "profile",
    "test",
    "migrate",
    "secure",
    "monitor",
    "cache",
    "roll back",
    "upgrade",
    "document",
]
THINGS = [
    "a static IP address for the main network interface",
    "a pytest fixture that provides an isolated Kafka consumer",
    "a PostgreSQL connection pool behind pgbouncer",
    "the retry policy of an HTTP client",
    "a systemd service that restarts on failure",
    "a LoRA fine-tuning run on a small causal model",
    "a Redis cache in front of a slow API",
    "TLS certificates for an internal gateway",
    "a GitHub Actions workflow with a build matrix",
    "a Rust crate with optional features",
    "the garbage collector of a JVM service",
    "a vector search over code snippets",
    "a Helm chart with per-environment values",
    "structured logging in a FastAPI application",
]
CONTEXTS = [
    "on NixOS",
    "with Docker compose",
    "on Kubernetes",
    "in a CI pipeline",
    "on a laptop without root",
    "behind a corporate proxy",
    "for a team of twenty developers",
    "with minimal downtime",
    "on ARM servers",
    "in an air-gapped network",
]
RESPONSE = (
    "Keep the settings in one place and apply them declaratively, then verify the result. "
    "First check what is currently active, change the configuration, reload the service and "
    "watch its logs for errors.\n\n```bash\nsudo systemctl reload app\njournalctl -u app -f\n"
    "```\n\nIf the change misbehaves, revert the commit and reload again; nothing else needs to "
    "be touched. Test the procedure on a staging host before production."
)


# --- events ---------------------------------------------------------------------------------


def query_text(tag: str, i: int) -> str:
    """A realistic, unique question (~20 words); ``tag`` keeps runs and phases apart."""
    action = ACTIONS[i % len(ACTIONS)]
    thing = THINGS[(i // len(ACTIONS)) % len(THINGS)]
    context = CONTEXTS[(i // (len(ACTIONS) * len(THINGS))) % len(CONTEXTS)]
    return f"How do I {action} {thing} {context}? Ticket {tag}-{i}."


def completion_event(event_id: str, query: str, ts: datetime, i: int) -> dict[str, Any]:
    """A scorable AIDB completion (like examples/aidb-events.jsonl), about 1 KB."""
    return {
        "event_type": "completion",
        "event_id": event_id,
        "session_id": f"bench-s-{i % 64}",
        "request_id": f"bench-r-{event_id[:12]}",
        "query": query,
        "response": RESPONSE,
        "llm_used": "local",
        "model": "Qwen2.5-Coder-7B-Instruct",
        "tokens_input": 900 + i % 400,
        "tokens_output": 200 + i % 100,
        "latency_ms": 1200.0 + i % 700,
        "context_retrieved": True,
        "qdrant_results": 5,
        "success": i % 10 != 0,
        "iterations": 1 + i % 4,
        "steps": 1 + i % 3,
        "tools_used": ["nix_search_options"] if i % 2 else [],
        "user_feedback": (1, 0, -1)[i % 3],
        "timestamp": ts.isoformat().replace("+00:00", "Z"),
    }


class EventMaker:
    """Events with unique ids and strictly increasing timestamps across the whole run."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.base = datetime.now(UTC) - timedelta(hours=1)
        self.seq = 0

    def make(self, query: str) -> tuple[str, bytes, bytes]:
        """(event id, key, value) of the next event."""
        self.seq += 1
        event_id = f"bench-{self.run}-{self.seq}"
        ts = self.base + timedelta(milliseconds=self.seq)
        ev = completion_event(event_id, query, ts, self.seq)
        return event_id, ev["session_id"].encode(), json.dumps(ev).encode()


def unique_texts(tag: str, n: int) -> list[str]:
    """``n`` distinct query texts."""
    return [query_text(tag, i) for i in range(n)]


def repeated_texts(tag: str, n: int, repeat_share: float, seed: int = 7) -> list[str]:
    """``n`` texts of which ``repeat_share`` repeat an earlier text of the list."""
    rng = random.Random(seed)
    fresh = unique_texts(tag, max(1, round(n * (1 - repeat_share))))
    out = list(fresh)
    out.extend(rng.choice(fresh) for _ in range(n - len(fresh)))
    rng.shuffle(out)
    return out


# --- processes ------------------------------------------------------------------------------


class OtherCpu:
    """CPU used by processes other than ``pids`` since creation, as a share of all cores.

    The load average lags by a minute; this says whether something else (a test suite) ran
    during a measurement.
    """

    def __init__(self, *pids: int) -> None:
        self.pids = (os.getpid(), *pids)
        self.t0, self.busy0, self.ours0 = time.monotonic(), busy_ticks(), self._ours()

    def _ours(self) -> int:
        return sum(process_ticks(pid) for pid in self.pids)

    def share(self) -> float:
        """Other processes' CPU / (wall time x cores) since creation."""
        ticks = os.sysconf("SC_CLK_TCK") * (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        other = (busy_ticks() - self.busy0) - (self._ours() - self.ours0)
        return max(0.0, other / ticks)


def busy_ticks() -> int:
    """Busy clock ticks of all cores (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def process_ticks(pid: int) -> int:
    """User + system clock ticks of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True)
class Shim:
    """Experiments applied inside the worker process (the package code is left as it is)."""

    fetch_max_wait_ms: int | None = None  # aiokafka consumer's fetch_max_wait_ms (Faust: 1500)
    qdrant_lookup: bool = False  # history searches by Qdrant local mode, not the numpy index
    no_spinner: bool = False  # drop Faust's terminal spinner (loglevel >= warning)

    def argv(self) -> list[str]:
        """The shim's own flags; empty when nothing is changed."""
        out = []
        if self.fetch_max_wait_ms is not None:
            out += ["--fetch-max-wait-ms", str(self.fetch_max_wait_ms)]
        if self.qdrant_lookup:
            out.append("--qdrant-lookup")
        if self.no_spinner:
            out.append("--no-spinner")
        return out


class Worker:
    """`learnstream worker` (score agent only) in a subprocess; optionally through the shim."""

    def __init__(
        self, bootstrap: str, data_dir: Path, shim: Shim, loglevel: str, app_id: str
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = data_dir / "worker.log"
        env = {
            **os.environ,
            "LEARNSTREAM_DATA_DIR": str(data_dir),
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LEARNSTREAM_WORKER__APP_ID": app_id,
            "LEARNSTREAM_WORKER__EXTRACT": "false",
            "LEARNSTREAM_WORKER__TRIGGERS": "false",
        }
        args = ["worker", "--web-port", str(self.port), "--loglevel", loglevel]
        if not shim.argv():
            cmd = [sys.executable, "-m", "learnstream", *args]
        else:
            me = str(Path(__file__).resolve())
            cmd = [sys.executable, me, "--worker-shim", *shim.argv(), "--", *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_serving(self, timeout: float = 180) -> None:
        """Until /healthz answers (the model is loaded by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("worker did not start serving")

    def metrics(self) -> dict[str, float]:
        """The worker's /metrics page as {sample: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            page = r.read().decode()
        out: dict[str, float] = {}
        for line in page.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def step_seconds(self) -> dict[str, float]:
        """Seconds spent so far in each step of the scoring stage (parse, embed, ...)."""
        out = {}
        for key, value in self.metrics().items():
            if key.startswith("learnstream_stage_seconds_sum{") and 'stage="score"' in key:
                step = key.split('step="')[1].split('"')[0]
                out[step] = value
        return out

    def hold_seconds(self) -> tuple[float, float]:
        """(seconds, events) held for the watermark so far."""
        m = self.metrics()
        return (
            m.get("learnstream_watermark_hold_seconds_sum", 0.0),
            m.get("learnstream_watermark_hold_seconds_count", 0.0),
        )

    def batches(self) -> float:
        """Score batches so far."""
        for key, value in self.metrics().items():
            if key.startswith("learnstream_stage_seconds_count{") and 'step="embed"' in key:
                return value
        return 0.0

    def proc_status(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes, and the thread count."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
            elif name == "Threads":
                out[name] = int(rest)
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the worker so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.proc, 60)
        self._log.close()


def worker_shim(argv: list[str]) -> None:
    """Run `learnstream <argv>` with the experiments of `Shim` applied."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker-shim", action="store_true")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=None)
    ap.add_argument("--qdrant-lookup", action="store_true")
    ap.add_argument("--no-spinner", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.fetch_max_wait_ms is not None:
        patch_fetch_max_wait(args.fetch_max_wait_ms)
    if args.qdrant_lookup:
        patch_qdrant_lookup()
    if args.no_spinner:
        import faust

        init = faust.Worker.__init__

        def worker_init(self: Any, *a: Any, **kw: Any) -> None:
            init(self, *a, **kw)
            self.spinner = None

        faust.Worker.__init__ = worker_init  # type: ignore[method-assign]
    from learnstream.cli import main

    sys.argv = ["learnstream", *[a for a in args.rest if a != "--"]]
    main()


def patch_fetch_max_wait(ms: int) -> None:
    """Faust's worker consumers in this process use ``fetch_max_wait_ms=ms``.

    Faust passes a hard-coded ``fetch_max_wait_ms=1500`` to aiokafka and has no setting for
    it; aiokafka reads the value when the consumer starts, so setting it on the freshly
    created consumer is enough. This is the change suggested for `streams/app.py` on the dev
    broker (whose mock cluster parks a fetch that finds no data for the whole wait).
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    create = cls._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    cls._create_worker_consumer = create_worker_consumer


def patch_qdrant_lookup() -> None:
    """History look-ups go to Qdrant local mode itself instead of the in-memory `HistoryIndex`.

    This is how the worker looked up history before `HistoryIndex`: local mode checks the
    payload filter in Python for every stored point, so each look-up costs O(history).
    """
    from scorers import vectors

    init = vectors.VectorLookups.__init__

    def qdrant_init(self: Any, client: Any, *, history_index: bool | None = None) -> None:
        init(self, client, history_index=False)

    vectors.VectorLookups.__init__ = qdrant_init  # type: ignore[method-assign]


# --- reading interactions.scored --------------------------------------------------------------


@dataclass
class Seen:
    """An output record: its timestamp (the worker's send time) and when we received it."""

    ts_ms: int
    recv_ns: int


@dataclass
class Collector:
    """Reads `interactions.scored` in a thread and remembers when each event id arrived."""

    bootstrap: str
    group: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    seen: dict[str, Seen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe and start reading (wait for the assignment before producing)."""
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "topic.metadata.refresh.interval.ms": 1000,
                # The dev broker parks an empty fetch for the whole fetch.wait.max.ms (new
                # records do not cut it short), which would add up to that to every latency.
                "fetch.wait.max.ms": 10,
                "allow.auto.create.topics": True,
            }
        )
        self.assigned = threading.Event()
        self.consumer.subscribe(
            [SCORED_TOPIC], on_assign=lambda c, parts: self.assigned.set() if parts else None
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.assigned.wait(60):
            raise RuntimeError("collector got no assignment")

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error() or msg.key() is None:
                continue
            now = time.time_ns()
            with self.lock:
                self.seen.setdefault(msg.key().decode(), Seen(msg.timestamp()[1], now))
        self.consumer.close()

    def wait_for(self, ids: list[str], deadline: float) -> list[Seen | None]:
        """The records of ``ids``, waiting until all are in or ``deadline`` (monotonic);
        None for those still missing then."""
        while True:
            with self.lock:
                found = [self.seen.get(i) for i in ids]
            if all(found) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        """Stop reading."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)


# --- phases ---------------------------------------------------------------------------------


def send_burst(bootstrap: str, maker: EventMaker, texts: list[str]) -> tuple[list[str], float]:
    """Produce one event per text as fast as possible (a backlog); (event ids, send time)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    ids = []
    t0 = time.time()
    for text in texts:
        event_id, key, value = maker.make(text)
        ids.append(event_id)
        p.produce(SOURCE_TOPIC, value, key=key)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("burst not delivered")
    return ids, t0


@dataclass
class Throughput:
    """Scored events/s of one burst."""

    n: int
    scored: int  # how many were scored before the phase's time limit
    rate_first_last: float  # after the first batch: (scored - first batch) / (last - first)
    rate_from_produce: float  # scored / (last output - first produce)
    seconds: float
    cpu_share: float  # worker CPU seconds / wall seconds / cores
    steps: dict[str, float]  # stage seconds per step during the burst
    other_cpu: float  # CPU of processes not of this benchmark, share of all cores


@dataclass
class Rig:
    """The broker's address, the event maker, the worker and the reader of its output."""

    bootstrap: str
    maker: EventMaker
    worker: Worker
    collector: Collector
    broker_pids: tuple[int, ...] = ()
    produced: int = 0  # events produced to this rig's broker

    def other_cpu(self) -> OtherCpu:
        """A meter of the CPU used by processes other than this rig's, from now."""
        return OtherCpu(*self.broker_pids, self.worker.proc.pid)


@contextmanager
def phase_broker(
    args: argparse.Namespace, work: Path, shared: BrokerInfo | None
) -> Iterator[BrokerInfo]:
    """A fresh broker for one phase (``args``), or the run's one existing cluster."""
    if shared is not None:
        yield shared
        return
    with broker_from_args(args, work / "broker", mock="process") as broker:
        yield broker


@dataclass
class Session:
    """What every phase of one run shares."""

    args: argparse.Namespace
    shim: Shim
    maker: EventMaker
    results: Results
    work: Path
    shared: BrokerInfo | None = None  # an existing cluster (--bootstrap) serves every phase


@contextmanager
def fresh_rig(session: Session, name: str) -> Iterator[Rig]:
    """A new broker (or the session's shared one), a new worker (empty Qdrant) and a reader,
    warmed up with 64 events; the broker's label goes to the results."""
    args, maker, shim = session.args, session.maker, session.shim
    work = session.work / name
    work.mkdir(parents=True)
    with phase_broker(args, work, session.shared) as broker:
        session.results.brokers.append(broker.label)
        broker.create_topics(AGENT_TOPICS)
        app_id = f"bench-score-{uuid.uuid4().hex[:6]}"
        collector = Collector(broker.bootstrap)
        # On an existing cluster both groups skip what is there already (its history).
        broker.start_group_at_end(app_id, [spec.name for spec in TELEMETRY.values()])
        broker.start_group_at_end(collector.group, [SCORED_TOPIC])
        worker = None
        try:
            worker = Worker(broker.bootstrap, work / "worker", shim, args.worker_loglevel, app_id)
            collector.start()
            worker.wait_serving()
            rig = Rig(broker.bootstrap, maker, worker, collector, broker.pids)
            # Group join, first fetch, first batch: none of it belongs to a measurement.
            burst_throughput(rig, unique_texts(f"w{work.name}", 64), 120)
            yield rig
        finally:
            collector.close()
            if worker is not None:
                worker.stop()


def burst_throughput(rig: Rig, texts: list[str], limit: float) -> Throughput:
    """Produce ``texts`` as one backlog and time the scored records (for ``limit`` s at most)."""
    bootstrap, maker, worker, collector = rig.bootstrap, rig.maker, rig.worker, rig.collector
    steps0, cpu0, wall0 = worker.step_seconds(), worker.cpu_seconds(), time.monotonic()
    other = rig.other_cpu()
    ids, t_produce = send_burst(bootstrap, maker, texts)
    rig.produced += len(ids)
    found = collector.wait_for(ids, time.monotonic() + limit)
    cpu, wall = worker.cpu_seconds() - cpu0, time.monotonic() - wall0
    steps1 = worker.step_seconds()
    stamps = sorted(s.ts_ms for s in found if s is not None)
    first, last = (stamps[0], stamps[-1]) if stamps else (0, 0)
    first_batch = sum(1 for t in stamps if t <= first + 20)
    return Throughput(
        n=len(ids),
        scored=len(stamps),
        rate_first_last=(len(stamps) - first_batch) / max((last - first) / 1000, 1e-3),
        rate_from_produce=len(stamps) / max(last / 1000 - t_produce, 1e-3),
        seconds=(last - first) / 1000,
        cpu_share=cpu / wall / (os.cpu_count() or 1),
        steps={k: steps1.get(k, 0.0) - steps0.get(k, 0.0) for k in steps1},
        other_cpu=other.share(),
    )


def bare_model_rate(texts: list[str]) -> tuple[float, float]:
    """(texts/s, other processes' CPU share) of the bare model over ``texts`` in the stage's
    batch size."""
    from learnstream.core.settings import load_settings
    from scorers.embeddings import Embedder

    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-bare-")))
    embedder = Embedder(settings.embedding)
    embedder.load()
    embedder.encode(["warm up the model", "and its kernels"])
    batch = settings.score.batch_size
    other = OtherCpu()
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.encode(texts[i : i + batch])
    elapsed = time.perf_counter() - t0
    return len(texts) / elapsed, other.share()


@dataclass
class Latency:
    """Produce -> scored latencies of a paced run, in milliseconds."""

    n: int
    achieved_rate: float
    to_send: list[float]  # to the worker's send (output record timestamp), scored ones
    to_receipt: list[float]  # to our consumer's receipt; inf for those never scored
    windows: list[tuple[float, float, float]]  # (seconds into the run, p50, max) to receipt
    steps: dict[str, float]
    batches: float  # score batches during the run
    other_cpu: float  # CPU of processes not of this benchmark, share of all cores


def paced_latency(rig: Rig, texts: list[str], rate: float, grace: float) -> Latency:
    """Produce ``texts`` at ``rate`` per second; latency of each to interactions.scored."""
    bootstrap, maker, worker, collector = rig.bootstrap, rig.maker, rig.worker, rig.collector
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    steps0, batches0 = worker.step_seconds(), worker.batches()
    other = rig.other_cpu()
    sent: dict[str, int] = {}
    offsets: list[float] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    for n, text in enumerate(texts):
        due = start + n * interval
        while (delay := due - time.perf_counter()) > 0:
            p.poll(min(delay, 0.005))
        event_id, key, value = maker.make(text)
        offsets.append(time.perf_counter() - start)
        sent[event_id] = time.time_ns()
        p.produce(SOURCE_TOPIC, value, key=key, headers=[("bench-sent-ns", str(sent[event_id]))])
        p.poll(0)
    achieved = len(texts) / (time.perf_counter() - start)
    rig.produced += len(texts)
    p.flush(30)
    ids = list(sent)
    found = collector.wait_for(ids, time.monotonic() + grace)
    to_receipt = [
        (s.recv_ns - sent[i]) / 1e6 if s else float("inf") for i, s in zip(ids, found, strict=True)
    ]
    windows = []
    for w in range(0, int(offsets[-1]) + 1, 10):
        vals = [v for v, o in zip(to_receipt, offsets, strict=True) if w <= o < w + 10]
        if vals:
            windows.append((float(w), statistics.median(vals), max(vals)))
    steps1 = worker.step_seconds()
    return Latency(
        n=len(ids),
        achieved_rate=achieved,
        to_send=[s.ts_ms - sent[i] / 1e6 for i, s in zip(ids, found, strict=True) if s],
        to_receipt=to_receipt,
        windows=windows,
        steps={k: steps1.get(k, 0.0) - steps0.get(k, 0.0) for k in steps1},
        batches=worker.batches() - batches0,
        other_cpu=other.share(),
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


# --- report ---------------------------------------------------------------------------------


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ok(cond: bool) -> str:
    """PASS or MISS."""
    return "PASS" if cond else "MISS"


def ms(value: float) -> str:
    """Milliseconds, or 'never' for an event that was not scored."""
    return "never" if value == float("inf") else f"{value:.0f}"


@dataclass
class Results:
    """Everything one run measured."""

    bare: tuple[float, float] = (0.0, 0.0)
    unique: Throughput | None = None
    repeated: Throughput | None = None
    latency: Latency | None = None
    idle_cpu: float | None = None  # worker CPU share of one core while idle
    memory: dict[str, int] = field(default_factory=dict)
    events: int = 0
    scored_at_memory: int = 0
    loads: dict[str, str] = field(default_factory=dict)
    brokers: list[str] = field(default_factory=list)  # each phase's broker (label)
    hold: tuple[float, float] = (0.0, 0.0)  # (seconds, events) held by the watermark in b


def throughput_rows(label: str, t: Throughput) -> list[tuple[str, str, str]]:
    """Table rows of one burst."""
    partial = "" if t.scored == t.n else f"  (only {t.scored} of {t.n} scored in the limit)"
    return [
        (f"stage, {label} (scored/s, first->last)", f"{t.rate_first_last:.1f}", partial),
        ("  scored/s from first produce to last output", f"{t.rate_from_produce:.1f}", ""),
        ("  worker CPU (share of all cores)", f"{t.cpu_share:.0%}", ""),
    ]


def print_report(args: argparse.Namespace, shim: Shim, r: Results) -> None:
    """The table."""
    mb = 1024 * 1024
    rows: list[tuple[str, str, str]] = []
    if r.unique:
        ratio = r.unique.rate_first_last / r.bare[0]
        bare = f"baseline: bare model, {args.n} unique texts (texts/s, no broker)"
        rows.append((bare, f"{r.bare[0]:.1f}", ""))
        rows += throughput_rows(f"{args.n} unique texts", r.unique)
        rows.append(("  ratio stage / bare", f"{ratio:.2f}", ">= 0.70 " + ok(ratio >= 0.7)))
    if r.repeated:
        rows += throughput_rows(f"{args.n} texts, {args.repeat_share:.0%} repeated", r.repeated)
    if r.latency:
        lat = r.latency
        p99 = percentile(lat.to_receipt, 99)
        scored = sum(1 for v in lat.to_receipt if v != float("inf"))
        rows += [
            (
                f"latency, {lat.achieved_rate:.1f} ev/s x {lat.n}: p50 to receipt (ms)",
                ms(percentile(lat.to_receipt, 50)),
                "" if scored == lat.n else f"  ({lat.n - scored} never scored)",
            ),
            ("  p99 to receipt (ms)", ms(p99), "< 500 " + ok(p99 < 500)),
            ("  max to receipt (ms)", ms(max(lat.to_receipt)), ""),
            (
                "  p50 / p99 to the worker's send (ms)",
                f"{percentile(lat.to_send, 50):.0f} / {percentile(lat.to_send, 99):.0f}",
                "",
            ),
            ("  events per score batch", f"{lat.n / max(lat.batches, 1):.1f}", ""),
        ]
    if r.latency and r.hold[1]:
        rows.append(
            ("  mean hold for the watermark (ms)", f"{1000 * r.hold[0] / r.hold[1]:.0f}", "")
        )
    if r.idle_cpu is not None:
        rows.append(("worker CPU while idle (share of one core)", f"{r.idle_cpu:.1%}", ""))
    if r.memory:
        rss = r.memory["VmRSS"]
        rows += [
            (
                f"worker VmRSS, {r.scored_at_memory} of {r.events} events scored (MB)",
                f"{rss / mb:.0f}",
                "< 1536 " + ok(rss < 1536 * mb),
            ),
            ("  peak VmHWM (MB)", f"{r.memory['VmHWM'] / mb:.0f}", ""),
        ]
    print()
    for phase, label in zip(("a unique", "a repeated", "b+c"), r.brokers, strict=False):
        print(f"broker, phase {phase}: {label}")
    print(f"load average (1/5/15 min): {' | '.join(f'{k} {v}' for k, v in r.loads.items())}")
    print(f"worker: score agent only, --loglevel {args.worker_loglevel}; shim: {shim}")
    horizon = os.environ.get("LEARNSTREAM_SCORE__WATERMARK_HORIZON_MS", "default")
    print(f"watermark: {args.watermark} (horizon ms: {horizon})")
    print(f"{'measurement':60} {'value':>12}  target")
    for name, value, target in rows:
        print(f"{name:60} {value:>12}  {target}")
    parts = [f"bare model {r.bare[1]:.0%}"]
    for label, t in (("a unique", r.unique), ("a repeated", r.repeated), ("b", r.latency)):
        if t is not None:
            parts.append(f"{label} {t.other_cpu:.0%}")
    print(f"CPU used by other processes (share of all cores) during: {', '.join(parts)}")
    if r.latency:
        per = ", ".join(f"{w:.0f}s {ms(p50)}/{ms(mx)}" for w, p50, mx in r.latency.windows)
        print(f"latency to receipt per 10 s of sending, p50/max ms: {per}")
    for label, steps in (
        ("unique burst", r.unique.steps if r.unique else None),
        ("repeated burst", r.repeated.steps if r.repeated else None),
        ("latency run", r.latency.steps if r.latency else None),
    ):
        if steps:
            text = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(steps.items()))
            print(f"stage seconds per step, {label}: {text}")


# --- main -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Each phase on a fresh broker and worker, so none inherits another's history."""
    shim = Shim(args.fetch_max_wait_ms, args.qdrant_lookup, args.no_spinner)
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    r = Results(loads={"start": load_average()})
    maker = EventMaker()
    # The workers inherit the environment.
    os.environ["LEARNSTREAM_SCORE__WATERMARK"] = "true" if args.watermark == "on" else "false"
    if args.horizon_ms is not None:
        os.environ["LEARNSTREAM_SCORE__WATERMARK_HORIZON_MS"] = str(args.horizon_ms)
    unique = unique_texts(f"u{maker.run}", args.n)
    if "a" in args.phases:
        print(f"bare model over {args.n} unique texts ...", flush=True)
        r.bare = bare_model_rate(unique)
    session = Session(args, shim, maker, r, work)
    with ExitStack() as stack:
        if args.bootstrap:
            session.shared = stack.enter_context(broker_from_args(args, work / "broker"))
        run_phases(session, unique)
    print_report(args, shim, r)


def run_phases(session: Session, unique: list[str]) -> None:
    """Phases a, b and c, each with a fresh worker (and a fresh broker unless shared)."""
    args, maker, r = session.args, session.maker, session.results
    limit = args.phase_limit
    if "a" in args.phases:
        with fresh_rig(session, "a-unique") as rig:
            print(f"a. burst of {args.n} unique texts ...", flush=True)
            r.loads["a"] = load_average()
            r.unique = burst_throughput(rig, unique, limit)
        with fresh_rig(session, "a-repeated") as rig:
            rep = repeated_texts(f"r{maker.run}", args.n, args.repeat_share)
            print(f"a. burst of {args.n} texts, {args.repeat_share:.0%} repeated ...", flush=True)
            r.repeated = burst_throughput(rig, rep, limit)
    if "b" not in args.phases and "c" not in args.phases:
        return
    with fresh_rig(session, "b-c") as rig:
        if "b" in args.phases:
            n_paced = int(args.rate * args.duration)
            print(f"b. {n_paced} events at {args.rate}/s ...", flush=True)
            r.loads["b"] = load_average()
            paced = unique_texts(f"p{maker.run}", n_paced)
            hold0 = rig.worker.hold_seconds()
            r.latency = paced_latency(rig, paced, args.rate, 20.0)
            hold1 = rig.worker.hold_seconds()
            r.hold = (hold1[0] - hold0[0], hold1[1] - hold0[1])
            if wait_idle(rig, 20.0):
                cpu0 = rig.worker.cpu_seconds()
                time.sleep(5)
                r.idle_cpu = (rig.worker.cpu_seconds() - cpu0) / 5
        if "c" in args.phases and rig.produced < args.rss_after:
            print(f"c. topping up to {args.rss_after} events ...", flush=True)
            top = unique_texts(f"t{maker.run}", args.rss_after - rig.produced)
            burst_throughput(rig, top, args.rss_limit)
        r.memory, r.events = rig.worker.proc_status(), rig.produced
        r.scored_at_memory = len(rig.collector.seen)
        r.loads["end"] = load_average()


def wait_idle(rig: Rig, limit: float) -> bool:
    """Until the worker has scored everything produced to it (or ``limit`` s)."""
    deadline = time.monotonic() + limit
    while len(rig.collector.seen) < rig.produced:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def main() -> None:
    """Parse the flags and run (or act as the worker shim)."""
    if "--worker-shim" in sys.argv[1:2]:
        worker_shim(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="events per throughput burst")
    ap.add_argument("--repeat-share", type=float, default=0.8, help="share of repeated texts")
    ap.add_argument("--rate", type=float, default=50.0, help="events/s of the latency run")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the latency run")
    ap.add_argument("--rss-after", type=int, default=10_000, help="events before reading RSS")
    ap.add_argument(
        "--phase-limit", type=float, default=45.0, help="seconds to wait for a burst (a) at most"
    )
    ap.add_argument(
        "--rss-limit", type=float, default=60.0, help="seconds to wait for the top-up (c) at most"
    )
    ap.add_argument("--worker-loglevel", default="info", help="the worker's --loglevel")
    ap.add_argument("--phases", default="abc", help="which of the phases a, b, c to run")
    ap.add_argument(
        "--watermark",
        choices=("on", "off"),
        default="on",
        help="hold events for the watermark (LEARNSTREAM_SCORE__WATERMARK) or score on arrival",
    )
    ap.add_argument(
        "--horizon-ms", type=int, default=None, help="LEARNSTREAM_SCORE__WATERMARK_HORIZON_MS"
    )
    ap.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="shim: the worker's aiokafka fetch_max_wait_ms (Faust hard-codes 1500)",
    )
    ap.add_argument(
        "--qdrant-lookup",
        action="store_true",
        help="shim: interaction-history searches by Qdrant local mode, not the numpy index",
    )
    ap.add_argument("--no-spinner", action="store_true", help="shim: drop Faust's terminal spinner")
    add_broker_arguments(ap)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
