"""Faust versus plain aiokafka: how fast records get *through* (run by hand; figures go in the
notes, never into tests).

A bare Faust agent that only forwards records from one topic to another (Faust settings as in
`streams/app.py` for the broker it runs on), against a plain aiokafka `getmany` loop reading
(and, as a second figure, forwarding) the same topic. ``aiokafka-fwd`` is the bare-client
baseline: it runs in every run (added when ``--variants`` leaves it out) and the table gives
each variant's rate as a share of it, same input, same broker. Each variant runs in its own
child process with its own consumer group, so they all read the same records from the start;
events/s is timed from the first to the last record the variant handles, and each child
reports where its time went: CPU share, how long each event loop sat idle in `select()`, and
the fetch requests its aiokafka consumer made (how many, how many records each brought, how
many came back empty after being parked for `fetch_max_wait_ms`).

The input is the scoring benchmark's AIDB completion events (~1 KB), produced twice:
``batched`` (linger 5 ms: message sets of hundreds of records, like a backlog from a busy
producer) and ``single`` (one record per message set, like live traffic at tens of events/s).
The dev broker returns at most ONE message set per partition per fetch and parks a fetch that
finds no data for the whole ``fetch_max_wait_ms`` (new records do not end the wait), so the
two inputs behave very differently there; on Kafka/Redpanda neither limit exists.

The broker (bench/brokers.py): the dev broker as a `learnstream broker` subprocess (default),
a fresh local Apache Kafka (``--broker kafka``) or an existing cluster (``--bootstrap``). The
topics (one input per style, one output per child, 4 partitions) are created up front and
named per run, so runs on an existing cluster do not read each other's records.

    python bench/bench_faust_forward.py [--n 10000] [--inputs batched,single]
                                        [--variants default|all|NAME,NAME...]
                                        [--repeat 3] [--profile]
                                        [--broker mock|kafka] [--bootstrap HOST:PORT]
    python bench/bench_faust_forward.py --list     # the variants and what each changes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score import (
    EventMaker,
    load_average,
    patch_fetch_max_wait,
    unique_texts,
)
from brokers import BrokerInfo, add_broker_arguments, broker_from_args

from learnstream.core.brokerprofile import KAFKA, MOCK

BASELINE = "aiokafka-fwd"  # the bare-client baseline, in every run


def app_settings(kind: str) -> dict[str, Any]:
    """The Faust settings `streams/app.py` uses on this kind of broker (mock or kafka)."""
    profile = MOCK if kind == "mock" else KAFKA
    return {
        "topic_allow_declare": profile.creates_topics,
        "topic_disable_leader": True,
        "store": "memory://",
        "web_enabled": False,
        "producer_linger": 0.005,
        "producer_compression_type": profile.compression,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        "stream_buffer_maxsize": 16384,
        "broker_session_timeout": profile.faust_session_timeout,
        "broker_heartbeat_interval": profile.faust_heartbeat_interval,
    }


@dataclass(frozen=True)
class Variant:
    """One way of getting records through."""

    name: str
    kind: str  # faust | aiokafka
    mode: str  # faust: event | take | noop; aiokafka: read | forward
    about: str
    settings: dict[str, Any] = field(default_factory=dict)  # Faust settings over app_settings()
    fetch_max_wait_ms: int | None = None  # None: the client's own (Faust 1500, aiokafka 500)
    take: int = 500
    loglevel: str = "info"  # `learnstream worker`'s default
    spinner: bool = True  # False: drop Faust's terminal spinner (see faust-event-warn-nospin)
    switch_interval: float | None = None  # sys.setswitchinterval (GIL hand-over; default 5 ms)


VARIANTS = [
    Variant("aiokafka-read", "aiokafka", "read", "plain getmany loop, count only"),
    Variant("aiokafka-fwd", "aiokafka", "forward", "getmany + AIOKafkaProducer.send per record"),
    Variant("faust-event", "faust", "event", "Faust per-event forward, streams/app.py settings"),
    Variant("faust-take", "faust", "take", "Faust take_events(500, within=0.1) forward"),
    Variant("faust-noop", "faust", "noop", "Faust per-event, no send (consumer path only)"),
    Variant(
        "faust-event-fw10",
        "faust",
        "event",
        "faust-event with fetch_max_wait_ms=10 (patched)",
        fetch_max_wait_ms=10,
    ),
    Variant(
        "faust-event-fw100",
        "faust",
        "event",
        "faust-event with fetch_max_wait_ms=100 (patched)",
        fetch_max_wait_ms=100,
    ),
    Variant(
        "faust-event-poll500",
        "faust",
        "event",
        "faust-event with broker_max_poll_records=500",
        settings={"broker_max_poll_records": 500},
    ),
    Variant(
        "faust-event-buf4k",
        "faust",
        "event",
        "faust-event with stream_buffer_maxsize=4096 (Faust default)",
        settings={"stream_buffer_maxsize": 4096},
    ),
    Variant(
        "faust-event-fetch64k",
        "faust",
        "event",
        "faust-event with consumer_max_fetch_size=64 KiB",
        settings={"consumer_max_fetch_size": 65536},
    ),
    Variant(
        "faust-event-nowait",
        "faust",
        "event",
        "faust-event with stream_wait_empty=False, broker_commit_every=100000",
        settings={"stream_wait_empty": False, "broker_commit_every": 100_000},
    ),
    Variant(
        "faust-event-warn",
        "faust",
        "event",
        "faust-event with --loglevel warning (as the tests run the worker)",
        loglevel="warning",
    ),
    Variant(
        "faust-event-warn-nospin",
        "faust",
        "event",
        "faust-event-warn with Faust's terminal spinner dropped (worker.spinner = None)",
        loglevel="warning",
        spinner=False,
    ),
    Variant(
        "faust-event-gil1ms",
        "faust",
        "event",
        "faust-event with sys.setswitchinterval(0.001) (GIL hand-over 1 ms, default 5 ms)",
        switch_interval=0.001,
    ),
    Variant(
        "faust-event-linger0",
        "faust",
        "event",
        "faust-event with producer_linger=0",
        settings={"producer_linger": 0.0},
    ),
]
DEFAULT = [
    "aiokafka-read",
    "aiokafka-fwd",
    "faust-event",
    "faust-take",
    "faust-noop",
    "faust-event-fw100",
    "faust-event-poll500",
    "faust-event-warn",
    "faust-event-warn-nospin",
]
BY_NAME = {v.name: v for v in VARIANTS}


# --- instrumentation (in the child) ---------------------------------------------------------


class Probe:
    """Idle time in select() per thread, and the aiokafka fetch requests of this process."""

    def __init__(self) -> None:
        self.idle: dict[str, float] = defaultdict(float)
        self.fetches = 0
        self.fetches_with_data = 0
        self.fetch_seconds = 0.0
        self.fetch_durations: list[float] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        """Patch the epoll selector and aiokafka's fetch request."""
        import selectors

        from aiokafka.consumer.fetcher import Fetcher

        probe = self
        select = selectors.EpollSelector.select

        def timed_select(self: Any, timeout: float | None = None) -> Any:
            t = time.perf_counter()
            try:
                return select(self, timeout)
            finally:
                probe.idle[threading.current_thread().name] += time.perf_counter() - t

        selectors.EpollSelector.select = timed_select  # type: ignore[method-assign]
        proc = Fetcher._proc_fetch_request

        async def timed_fetch(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
            t = time.perf_counter()
            has_data = await proc(self, assignment, node_id, request)
            elapsed = time.perf_counter() - t
            probe.fetches += 1
            probe.fetches_with_data += bool(has_data)
            probe.fetch_seconds += elapsed
            probe.fetch_durations.append(elapsed)
            return has_data

        Fetcher._proc_fetch_request = timed_fetch  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, Any]:
        """The counters now."""
        return {
            "idle": dict(self.idle),
            "fetches": self.fetches,
            "fetches_with_data": self.fetches_with_data,
            "fetch_seconds": self.fetch_seconds,
            "n_durations": len(self.fetch_durations),
        }


@dataclass
class Window:
    """What happened between the first and the last record a child handled."""

    probe: Probe
    n: int
    t0: float = 0.0
    cpu0: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    profiler: Any = None  # a cProfile.Profile of the main thread, when asked for

    def tick(self, k: int) -> bool:
        """Count ``k`` records; True once all ``n`` are in."""
        if self.count == 0:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
            self.before = self.probe.snapshot()
            if self.profiler is not None:
                self.profiler.enable()
        self.count += k
        return self.count >= self.n

    def result(self, flushed_at: float | None = None) -> dict[str, Any]:
        """The figures of the window (up to now)."""
        wall = time.perf_counter() - self.t0
        if self.profiler is not None:
            self.profiler.disable()
        after = self.probe.snapshot()
        idle = {
            name: (secs - self.before["idle"].get(name, 0.0)) / wall
            for name, secs in after["idle"].items()
        }
        fetches = after["fetches"] - self.before["fetches"]
        durations = self.probe.fetch_durations[self.before["n_durations"] :]
        return {
            "records": self.count,
            "seconds": wall,
            "rate": (self.count - 1) / wall if wall > 0 else 0.0,
            "flush_seconds": flushed_at - self.t0 if flushed_at else None,
            "cpu_share": (time.process_time() - self.cpu0) / wall,
            "idle": idle,
            "fetches": fetches,
            "fetches_with_data": after["fetches_with_data"] - self.before["fetches_with_data"],
            "records_per_fetch": self.count / max(fetches, 1),
            "mean_fetch_ms": 1000 * sum(durations) / max(len(durations), 1),
            "parked_fetches": sum(1 for d in durations if d >= 0.09),
            "parked_seconds": sum(d for d in durations if d >= 0.09),
            "profile": self.profile_text(),
        }

    def profile_text(self, top: int = 30) -> str | None:
        """The main thread's hottest functions (own time) during the window."""
        if self.profiler is None:
            return None
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(self.profiler, stream=out).sort_stats("tottime").print_stats(top)
        return out.getvalue()


def new_window(args: argparse.Namespace, probe: Probe) -> Window:
    """A window over ``args.n`` records, profiling the main thread if ``--profile``."""
    import cProfile

    return Window(probe, args.n, profiler=cProfile.Profile() if args.profile else None)


# --- children -------------------------------------------------------------------------------


def faust_child(args: argparse.Namespace, variant: Variant) -> None:
    """Run a Faust worker with one forwarding agent until ``args.n`` records went through."""
    import faust

    from streams.mockcompat import tolerate_mock_group_sync

    probe = Probe()
    probe.install()
    if variant.switch_interval is not None:
        sys.setswitchinterval(variant.switch_interval)
    if variant.fetch_max_wait_ms is not None:
        patch_fetch_max_wait(variant.fetch_max_wait_ms)
    if args.broker == "mock":
        tolerate_mock_group_sync()
    app = faust.App(
        f"bench-fwd-{variant.name}-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{args.bootstrap}",
        datadir=tempfile.mkdtemp(prefix="bench-fwd-faust-"),
        **{**app_settings(args.broker), **variant.settings},
    )
    source = app.topic(
        args.source, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    sink = app.topic(args.sink, key_serializer="raw", value_serializer="raw")
    window = new_window(args, probe)

    async def finish() -> None:
        result = window.result()
        await app.producer.flush()
        result["flush_seconds"] = time.perf_counter() - window.t0
        Path(args.result).write_text(json.dumps(result))
        os._exit(0)

    @app.agent(source, name="forward")
    async def forward(stream: Any) -> None:
        if variant.mode == "take":
            async for events in stream.take_events(variant.take, within=0.1):
                await asyncio.gather(
                    *(sink.send(key=e.message.key, value=e.message.value) for e in events)
                )
                if window.tick(len(events)):
                    await finish()
            return
        async for event in stream.events():
            if variant.mode == "event":
                await sink.send(key=event.message.key, value=event.message.value)
            if window.tick(1):
                await finish()

    worker = faust.Worker(app, loglevel=variant.loglevel, quiet=True)
    if not variant.spinner:
        worker.spinner = None
    worker.execute_from_commandline()


async def aiokafka_child(args: argparse.Namespace, variant: Variant) -> None:
    """Read (and optionally forward) ``args.n`` records with a plain aiokafka getmany loop."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    probe = Probe()
    probe.install()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=variant.fetch_max_wait_ms or 500,
    )
    await consumer.start()
    metadata = await consumer._client.fetch_all_metadata()
    parts = metadata.partitions_for_topic(args.source) or set()
    consumer.assign([TopicPartition(args.source, p) for p in sorted(parts)])
    await consumer.seek_to_beginning()
    producer = None
    if variant.mode == "forward":
        producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, acks="all")
        await producer.start()
    window = new_window(args, probe)
    done = False
    while not done:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            if producer is not None:
                for r in records:
                    await producer.send(args.sink, r.value, key=r.key)
            if records and window.tick(len(records)):
                done = True
    result = window.result()
    if producer is not None:
        await producer.flush()
        result["flush_seconds"] = time.perf_counter() - window.t0
        await producer.stop()
    await consumer.stop()
    Path(args.result).write_text(json.dumps(result))


def child(args: argparse.Namespace) -> None:
    """Entry point of a child process."""
    variant = BY_NAME[args.child]
    if variant.kind == "faust":
        faust_child(args, variant)
    else:
        asyncio.run(aiokafka_child(args, variant))


# --- parent ---------------------------------------------------------------------------------


def produce_input(bootstrap: str, topic: str, n: int, style: str) -> float:
    """``n`` events into ``topic``; returns events/s produced."""
    from confluent_kafka import Producer

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all"}
    if style == "single":  # one record per message set
        conf.update({"linger.ms": 0, "batch.num.messages": 1})
    else:
        conf.update({"linger.ms": 5})
    p = Producer(conf)
    maker = EventMaker()
    t0 = time.perf_counter()
    for text in unique_texts(f"fwd{maker.run}", n):
        _, key, value = maker.make(text)
        while True:
            try:
                p.produce(topic, value, key=key)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(120):
        raise RuntimeError(f"input {topic} not delivered")
    return n / (time.perf_counter() - t0)


def run_child(args: argparse.Namespace, broker: BrokerInfo, variant: Variant, source: str) -> dict:
    """One variant in a child process (its own output topic); its figures."""
    result = Path(tempfile.mkstemp(prefix="bench-fwd-", suffix=".json")[1])
    sink = f"bench.fwd.out.{uuid.uuid4().hex[:8]}"
    broker.create_topics([sink])
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant.name,
        "--broker",
        broker.kind,
        "--bootstrap",
        broker.bootstrap,
        "--source",
        source,
        "--sink",
        sink,
        "--n",
        str(args.n),
        "--result",
        str(result),
        *(["--profile"] if args.profile else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    try:
        return dict(json.loads(result.read_text()))
    except ValueError:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{variant.name} failed (exit {proc.returncode}):\n{tail}") from None


def idle_summary(idle: dict[str, float]) -> str:
    """'main 81%, consumer 95%' from {thread name: idle share}."""
    parts = []
    for name, share in sorted(idle.items(), key=lambda kv: kv[0] != "MainThread"):
        label = "main" if name == "MainThread" else name.split("(")[0][:18]
        parts.append(f"{label} {share:.0%}")
    return ", ".join(parts)


def print_table(args: argparse.Namespace, broker: BrokerInfo, rows: list[Any]) -> None:
    """The result table: every variant's figures, and its rate as a share of the baseline's."""
    base = {style: r["rate"] for style, v, r, _ in rows if v.name == BASELINE}
    print()
    print(f"broker: {broker.label}")
    print(f"baseline (same run, same broker): {BASELINE}, a plain aiokafka getmany + send loop")
    print(f"{args.n} records per run; rate = records / (last - first record handled)", end="")
    print(f"; median of {args.repeat} runs" if args.repeat > 1 else "")
    head = f"{'input':8} {'variant':23} {'ev/s':>9} {'vs base':>7} {'cpu':>5} {'fetches':>8}"
    print(f"{head} {'rec/fetch':>9} {'parked':>7} {'parked s':>8}  idle in select() per thread")
    for style, v, r, _ in rows:
        share = r["rate"] / base[style] if base.get(style) else float("nan")
        print(
            f"{style:8} {v.name:23} {r['rate']:>9,.0f} {share:>7.2f} {r['cpu_share']:>5.0%} "
            f"{r['fetches']:>8} {r['records_per_fetch']:>9.1f} {r['parked_fetches']:>7} "
            f"{r['parked_seconds']:>8.1f}  {idle_summary(r['idle'])}"
        )
    print("vs base = ev/s / aiokafka-fwd ev/s of the same input; parked = fetches that took")
    print(">= 90 ms (the dev broker parks an empty fetch for the whole fetch_max_wait_ms; Kafka")
    print("answers as soon as data arrives); cpu = process CPU seconds / wall seconds (2 cores =")
    print("200%)")


def main() -> None:
    """Produce the inputs, run the variants, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="records per input")
    ap.add_argument("--inputs", default="batched,single", help="batched, single or both")
    ap.add_argument("--variants", default="default", help="default, all, or names")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant (median reported)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per variant at most")
    ap.add_argument("--list", action="store_true", help="list the variants")
    ap.add_argument("--profile", action="store_true", help="cProfile each child's main thread")
    add_broker_arguments(ap)  # a child gets the parent's broker as --broker KIND --bootstrap
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("source", "sink", "result"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.list:
        for v in VARIANTS:
            print(f"{v.name:22} {v.about}{'  [default]' if v.name in DEFAULT else ''}")
        return
    names = {"default": DEFAULT, "all": [v.name for v in VARIANTS]}.get(
        args.variants, args.variants.split(",")
    )
    if BASELINE not in names:
        names = [BASELINE, *names]
    variants = [BY_NAME[n] for n in names]
    work = Path(tempfile.mkdtemp(prefix="bench-fwd-"))
    run_tag = uuid.uuid4().hex[:6]
    rows = []
    with broker_from_args(args, work / "broker", mock="process") as broker:
        print(f"broker: {broker.label}", flush=True)
        styles = args.inputs.split(",")
        topics = {style: f"bench.fwd.in.{style}.{run_tag}" for style in styles}
        broker.create_topics(topics.values())
        for style in styles:
            topic = topics[style]
            rate = produce_input(broker.bootstrap, topic, args.n, style)
            print(f"input {style}: {args.n} events produced at {rate:,.0f}/s", flush=True)
            for variant in variants:
                load = load_average()
                runs = [run_child(args, broker, variant, topic) for _ in range(args.repeat)]
                runs.sort(key=lambda x: x["rate"])
                res = runs[len(runs) // 2]
                rows.append((style, variant, res, load))
                spread = " / ".join(f"{x['rate']:,.0f}" for x in runs)
                print(f"  {variant.name:24} {spread:>26} ev/s  (load {load})", flush=True)
    print_table(args, broker, rows)
    print(f"load average at the start of each run: {', '.join(sorted({r[3] for r in rows}))}")
    for style, v, r, _ in rows:
        if r.get("profile"):
            print(f"\n--- main-thread profile: {style} / {v.name} ---\n{r['profile']}")


if __name__ == "__main__":
    main()
