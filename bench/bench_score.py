"""Scoring stage benchmark: the real worker on the dev broker (run by hand; figures go in the
notes, never into tests).

Starts `learnstream broker` and one `learnstream worker` (extract and triggers agents off, so
only the `score` agent runs) as subprocesses, each with its own data dir, produces AIDB
`completion` events to `telemetry.aidb` with confluent-kafka and reads `interactions.scored`
back with a confluent-kafka consumer.

a. Throughput: a backlog of N events with unique query texts, then N events of which a
   ``--repeat-share`` (0.8) repeat earlier texts of the same burst; scored events/s from the
   first to the last output record. In the same run, before the worker starts, the bare model
   (`scorers.embeddings.Embedder`, batches of `LEARNSTREAM_SCORE__BATCH_SIZE`) encodes the same
   unique texts: the ratio stage/bare (target >= 0.7 with unique texts).
b. Latency from produce to `interactions.scored` at ``--rate`` events/s for ``--duration`` s:
   p50/p99 to the worker's send (output record timestamp) and to receipt by a consumer
   (target p99 < 500 ms).
c. The worker's resident memory (VmRSS, and the peak VmHWM) once it has scored
   ``--rss-after`` events in all (topped up with a burst if the phases above made fewer);
   target < 1.5 GB.

    python bench/bench_score.py [--n 3000] [--repeat-share 0.8] [--rate 50] [--duration 60]
                                [--rss-after 10000] [--fetch-max-wait-ms MS]

``--fetch-max-wait-ms`` starts the worker through a shim that overrides the aiokafka consumer's
``fetch_max_wait_ms`` (Faust hard-codes 1500 ms), to measure that setting's effect on (b).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

ROOT = Path(__file__).resolve().parent.parent
SOURCE_TOPIC = "telemetry.aidb"
SCORED_TOPIC = "interactions.scored"

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


class Broker:
    """`learnstream broker` in a subprocess with its own data dir."""

    def __init__(self, data_dir: Path) -> None:
        env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir)}
        env.pop("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", "broker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        record = data_dir / "broker.json"
        deadline = time.monotonic() + 30
        while not record.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("dev broker did not start")
            time.sleep(0.05)
        self.bootstrap: str = json.loads(record.read_text())["bootstrap_servers"]

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """`learnstream worker` (score agent only) in a subprocess; optionally through the shim."""

    def __init__(self, bootstrap: str, data_dir: Path, fetch_max_wait_ms: int | None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = data_dir / "worker.log"
        env = {
            **os.environ,
            "LEARNSTREAM_DATA_DIR": str(data_dir),
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LEARNSTREAM_WORKER__APP_ID": f"bench-score-{uuid.uuid4().hex[:6]}",
            "LEARNSTREAM_WORKER__EXTRACT": "false",
            "LEARNSTREAM_WORKER__TRIGGERS": "false",
        }
        args = ["worker", "--web-port", str(self.port), "--loglevel", "warning"]
        if fetch_max_wait_ms is None:
            cmd = [sys.executable, "-m", "learnstream", *args]
        else:
            shim = ["--worker-shim", "--fetch-max-wait-ms", str(fetch_max_wait_ms)]
            cmd = [sys.executable, str(Path(__file__).resolve()), *shim, "--", *args]
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
    """Run `learnstream <argv>` with the aiokafka consumer's fetch_max_wait_ms overridden."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker-shim", action="store_true")
    ap.add_argument("--fetch-max-wait-ms", type=int, required=True)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    patch_fetch_max_wait(args.fetch_max_wait_ms)
    from learnstream.cli import main

    sys.argv = ["learnstream", *[a for a in args.rest if a != "--"]]
    main()


def patch_fetch_max_wait(ms: int) -> None:
    """Every AIOKafkaConsumer created in this process uses ``fetch_max_wait_ms=ms``."""
    import aiokafka

    cls: Any = aiokafka.AIOKafkaConsumer
    init = cls.__init__

    def __init__(self: Any, *a: Any, **kw: Any) -> None:
        kw["fetch_max_wait_ms"] = ms
        init(self, *a, **kw)

    cls.__init__ = __init__


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
    seen: dict[str, Seen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Subscribe and start reading (wait for the assignment before producing)."""
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
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

    def wait_for(self, ids: list[str], timeout: float) -> list[Seen]:
        """The records of ``ids`` (all of them, or raises after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                missing = sum(1 for i in ids if i not in self.seen)
            if not missing:
                with self.lock:
                    return [self.seen[i] for i in ids]
            time.sleep(0.05)
        raise RuntimeError(f"{missing} of {len(ids)} events not scored within {timeout:.0f}s")

    def close(self) -> None:
        """Stop reading."""
        self.stop.set()
        self.thread.join(10)


# --- phases ---------------------------------------------------------------------------------


def create_topics(bootstrap: str) -> None:
    """Have the dev broker create the topics now (it creates them on first metadata request)."""
    p = Producer({"bootstrap.servers": bootstrap})
    for topic in (SOURCE_TOPIC, SCORED_TOPIC):
        p.list_topics(topic, timeout=10)


def producer(bootstrap: str) -> Producer:
    """A confluent-kafka producer that sends at once (no linger), like a live tool."""
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})


def send_burst(bootstrap: str, maker: EventMaker, texts: list[str]) -> tuple[list[str], float]:
    """Produce one event per text as fast as possible; (event ids, wall time of first send)."""
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
    rate_first_last: float  # after the first batch: (n - first batch) / (last - first)
    rate_from_produce: float  # n / (last output - first produce)
    seconds: float
    cpu_share: float  # worker CPU seconds / wall seconds / cores
    steps: dict[str, float]  # stage seconds per step during the burst


def burst_throughput(
    bootstrap: str, maker: EventMaker, worker: Worker, collector: Collector, texts: list[str]
) -> Throughput:
    """Produce ``texts`` as one backlog and time the scored records."""
    steps0, cpu0, wall0 = worker.step_seconds(), worker.cpu_seconds(), time.monotonic()
    ids, t_produce = send_burst(bootstrap, maker, texts)
    seen = collector.wait_for(ids, timeout=max(120.0, len(ids) / 20))
    cpu, wall = worker.cpu_seconds() - cpu0, time.monotonic() - wall0
    steps1 = worker.step_seconds()
    stamps = sorted(s.ts_ms for s in seen)
    first, last = stamps[0], stamps[-1]
    first_batch = sum(1 for t in stamps if t <= first + 20)
    return Throughput(
        n=len(ids),
        rate_first_last=(len(ids) - first_batch) / max((last - first) / 1000, 1e-3),
        rate_from_produce=len(ids) / max(last / 1000 - t_produce, 1e-3),
        seconds=(last - first) / 1000,
        cpu_share=cpu / wall / (os.cpu_count() or 1),
        steps={k: steps1.get(k, 0.0) - steps0.get(k, 0.0) for k in steps1},
    )


def bare_model_rate(texts: list[str]) -> tuple[float, float]:
    """(texts/s, seconds) of the bare model over ``texts`` in the stage's batch size."""
    from learnstream.settings import load_settings
    from scorers.embeddings import Embedder

    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-bare-")))
    embedder = Embedder(settings.embedding)
    embedder.load()
    embedder.encode(["warm up the model", "and its kernels"])
    batch = settings.score.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.encode(texts[i : i + batch])
    elapsed = time.perf_counter() - t0
    return len(texts) / elapsed, elapsed


@dataclass
class Latency:
    """Produce → scored latencies of a paced run, in milliseconds."""

    n: int
    achieved_rate: float
    to_send: list[float]  # to the worker's send (output record timestamp)
    to_receipt: list[float]  # to our consumer's receipt
    windows: list[tuple[float, float, float]]  # (seconds into the run, p50, max) to receipt


def paced_latency(
    bootstrap: str,
    maker: EventMaker,
    collector: Collector,
    texts: list[str],
    rate: float,
) -> Latency:
    """Produce ``texts`` at ``rate`` per second; latency of each to interactions.scored."""
    p = producer(bootstrap)
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
    p.flush(30)
    ids = list(sent)
    seen = collector.wait_for(ids, timeout=120)
    to_receipt = [(s.recv_ns - sent[i]) / 1e6 for i, s in zip(ids, seen, strict=True)]
    windows = []
    for w in range(0, int(offsets[-1]) + 1, 10):
        vals = [v for v, o in zip(to_receipt, offsets, strict=True) if w <= o < w + 10]
        if vals:
            windows.append((float(w), statistics.median(vals), max(vals)))
    return Latency(
        n=len(ids),
        achieved_rate=achieved,
        to_send=[s.ts_ms - sent[i] / 1e6 for i, s in zip(ids, seen, strict=True)],
        to_receipt=to_receipt,
        windows=windows,
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


# --- main -----------------------------------------------------------------------------------


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_report(
    args: argparse.Namespace,
    bare: tuple[float, float],
    unique: Throughput,
    repeated: Throughput,
    latency: Latency,
    memory: dict[str, int],
    total: int,
    loads: dict[str, str],
) -> None:
    """The table."""
    mb = 1024 * 1024
    ratio = unique.rate_first_last / bare[0]
    lat_p99 = percentile(latency.to_receipt, 99)
    print()
    print(f"load average (1/5/15 min): {' | '.join(f'{k} {v}' for k, v in loads.items())}")
    fetch = f"{args.fetch_max_wait_ms} ms (shim)" if args.fetch_max_wait_ms else "Faust's 1500 ms"
    print(f"worker: score agent only; consumer fetch_max_wait_ms = {fetch}")
    print(f"{'measurement':58} {'value':>14}  target")
    rows = [
        (f"bare model, {args.n} unique texts, batches of 64 (texts/s)", f"{bare[0]:.1f}", ""),
        (f"stage, {args.n} unique texts (scored/s, first->last)", f"{unique.rate_first_last:.1f}", ""),
        ("  ratio stage / bare", f"{ratio:.2f}", ">= 0.70 " + ok(ratio >= 0.7)),
        ("  scored/s from first produce to last output", f"{unique.rate_from_produce:.1f}", ""),
        ("  worker CPU (share of all cores)", f"{unique.cpu_share:.0%}", ""),
        (
            f"stage, {args.n} texts, {args.repeat_share:.0%} repeated (scored/s)",
            f"{repeated.rate_first_last:.1f}",
            "",
        ),
        ("  scored/s from first produce to last output", f"{repeated.rate_from_produce:.1f}", ""),
        (
            f"latency at {latency.achieved_rate:.1f} ev/s x {latency.n}: p50 to receipt (ms)",
            f"{percentile(latency.to_receipt, 50):.0f}",
            "",
        ),
        ("  p99 to receipt (ms)", f"{lat_p99:.0f}", "< 500 " + ok(lat_p99 < 500)),
        ("  max to receipt (ms)", f"{max(latency.to_receipt):.0f}", ""),
        (
            "  p50 / p99 to the worker's send (ms)",
            f"{percentile(latency.to_send, 50):.0f} / {percentile(latency.to_send, 99):.0f}",
            "",
        ),
        (f"worker VmRSS after {total} events (MB)", f"{memory['VmRSS'] / mb:.0f}", "< 1536 " + ok(memory["VmRSS"] < 1536 * mb)),
        ("  peak VmHWM (MB)", f"{memory['VmHWM'] / mb:.0f}", ""),
    ]
    for name, value, target in rows:
        print(f"{name:58} {value:>14}  {target}")
    per_window = ", ".join(f"{w:.0f}s: {p50:.0f}/{mx:.0f}" for w, p50, mx in latency.windows)
    print(f"latency to receipt per 10 s window, p50/max ms: {per_window}")
    for label, t in (("unique", unique), ("repeated", repeated)):
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(t.steps.items()))
        print(f"stage step seconds during the {label} burst ({t.seconds:.1f}s wall): {steps}")


def ok(cond: bool) -> str:
    """PASS or MISS."""
    return "PASS" if cond else "MISS"


def run(args: argparse.Namespace) -> None:
    """All phases against one broker and one worker."""
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    loads = {"start": load_average()}
    maker = EventMaker()
    unique = unique_texts(f"u{maker.run}", args.n)
    print(f"bare model over {args.n} unique texts ...", flush=True)
    bare = bare_model_rate(unique)
    broker = Broker(work / "broker")
    create_topics(broker.bootstrap)
    worker = None
    collector = Collector(broker.bootstrap)
    try:
        worker = Worker(broker.bootstrap, work / "worker", args.fetch_max_wait_ms)
        collector.start()
        worker.wait_serving()
        print("worker serving; warming up (group join, first batch) ...", flush=True)
        burst_throughput(broker.bootstrap, maker, worker, collector, unique_texts("warm", 64))
        print(f"a. burst of {args.n} unique texts ...", flush=True)
        loads["a"] = load_average()
        res_unique = burst_throughput(broker.bootstrap, maker, worker, collector, unique)
        rep = repeated_texts(f"r{maker.run}", args.n, args.repeat_share)
        print(f"a. burst of {args.n} texts, {args.repeat_share:.0%} repeated ...", flush=True)
        res_repeated = burst_throughput(broker.bootstrap, maker, worker, collector, rep)
        n_paced = int(args.rate * args.duration)
        print(f"b. {n_paced} events at {args.rate}/s ...", flush=True)
        loads["b"] = load_average()
        paced = unique_texts(f"p{maker.run}", n_paced)
        latency = paced_latency(broker.bootstrap, maker, collector, paced, args.rate)
        if maker.seq < args.rss_after:
            print(f"c. topping up to {args.rss_after} events ...", flush=True)
            top = unique_texts(f"t{maker.run}", args.rss_after - maker.seq)
            burst_throughput(broker.bootstrap, maker, worker, collector, top)
        memory = worker.proc_status()
        loads["end"] = load_average()
        print_report(args, bare, res_unique, res_repeated, latency, memory, maker.seq, loads)
    finally:
        collector.close()
        if worker is not None:
            worker.stop()
        broker.stop()


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
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="override the worker's aiokafka fetch_max_wait_ms (Faust: 1500) through a shim",
    )
    run(ap.parse_args())


if __name__ == "__main__":
    main()
