"""The promise of the value score, as a user would run a backfill: replaying the worker's group
from the start reproduces every score, factor, input and high-value decision.

One worker scores a corpus of the four tools' events spread over many partitions of the four
telemetry topics, in two parts: (a) everything produced at once; (b) produced with a
different partition lag: ``telemetry.ralph`` partition 3 resumes 0.4 s after the others (its
interactions are still visible to theirs, so the worker must hold them until it has read
those) and ``telemetry.aidb`` partition 2 is paused for 3 s (longer than the arrival horizon:
its interactions are late, on the first pass and on every replay alike). The worker stops;
``learnstream replay --to-start --force`` resets its group; the same worker (same app id,
same Qdrant state) scores everything again: nothing may change. Then a fresh worker (new
group, empty state) backfills the same topics: nothing may change either.

Each part asks six questions in eight phrasings (similar, not saturating the top 10 of
reusability), the second part about other things than the first, so its scores depend on
its own events being seen. The test runs on a broker of its own (a fresh local Kafka, or a
fresh mock cluster), so no other test's records are on its topics, nor its on theirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
TELEMETRY = ("telemetry.ralph", "telemetry.aidb", "telemetry.hybrid", "telemetry.vscode")
SOURCES = ("ralph", "aidb", "hybrid", "vscode")
PAUSED = ("telemetry.aidb", 2)  # longer than the horizon
LAGGING = ("telemetry.ralph", 3)  # shorter than the horizon
BASES = [
    [
        "How do I collimate a Newtonian telescope",
        "How do I prune tomato plants in summer",
        "Which chess opening suits a beginner playing white",
        "How do I tell a song thrush from a mistle thrush by its call",
        "How do I adjust the rear derailleur on a road bike",
        "How do I repot an orchid without damaging its roots",
    ],
    [
        "How do I photograph the Milky Way with a phone",
        "How do I keep slugs away from lettuce seedlings",
        "How do I practise chess endgames with a king and a rook",
        "How do I attract goldfinches to a garden feeder",
        "How do I true a wobbly bicycle wheel at home",
        "How do I get a moth orchid to flower again",
    ],
]
VARIANTS = [
    "{q}?",
    "{q} please?",
    "Question: {q}?",
    "{q}, step by step?",
    "Quick one: {q}?",
    "{q} as a beginner?",
    "Can you explain {q}?",
    "{q} without special tools?",
]
ANSWER = (
    "Work through it in small steps and check the result after each one, so a mistake shows "
    "up early.\n```\nstep 1: loosen\nstep 2: adjust a quarter turn\nstep 3: check\n```"
)


def _event(source: str, n: int, query: str, at: datetime) -> dict[str, Any]:
    ok, feedback = n % 5 != 2, (1, 0, 1, -1, 0, 1)[n % 6]
    ts = at.isoformat()
    event_id = f"det-{RUN}-{n}"
    if source == "ralph":
        return {
            "event": "task_completed", "event_id": event_id, "task_id": f"t{n % 7}-{RUN}",
            "prompt": query, "output": ANSWER, "iteration": 1 + n % 5,
            "exit_code": 0 if ok else 1, "user_feedback": feedback, "timestamp": ts,
        }  # fmt: skip
    if source == "aidb":
        return {
            "event_type": "completion", "event_id": event_id, "session_id": f"s{n % 7}-{RUN}",
            "query": query, "response": ANSWER, "success": ok, "user_feedback": feedback,
            "timestamp": ts,
        }  # fmt: skip
    if source == "hybrid":
        return {
            "event": "route_decided", "event_id": event_id, "conversation_id": f"c{n}-{RUN}",
            "query": query, "route": "local", "success": ok, "user_feedback": feedback,
            "timestamp": ts,
        }  # fmt: skip
    return {
        "event_type": "completion", "event_id": event_id, "session_id": f"v{n % 7}-{RUN}",
        "prompt": query, "completion": ANSWER, "success": ok, "copied_to_clipboard": n % 3 == 0,
        "timestamp": ts,
    }  # fmt: skip


Placed = tuple[str, int, dict[str, Any]]  # topic, partition, event


def corpus(part: int, partitions: dict[str, int]) -> list[Placed]:
    """One part of the corpus, in event-time order, spread over every partition of the four
    telemetry topics (``partitions``: how many each has)."""
    t0 = datetime(2018, 1, 1 + part, tzinfo=UTC)
    out: list[Placed] = []
    for k, (variant, base) in enumerate((v, b) for v in VARIANTS for b in BASES[part]):
        n = part * 1000 + k
        source = SOURCES[k % 4]
        query = variant.format(q=base)
        topic = f"telemetry.{source}"
        at = t0 + timedelta(seconds=10 * k)
        out.append((topic, (k // 4) % partitions[topic], _event(source, n, query, at)))
    return out


def telemetry_partitions(bootstrap: str) -> dict[str, int]:
    """Create the registry's topics where missing (not on the mock); their partition counts."""
    env = {**os.environ, "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    subprocess.run(
        [sys.executable, "-m", "learnstream", "topics", "create"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    counts = {t: len(producer.list_topics(t, timeout=30).topics[t].partitions) for t in TELEMETRY}
    assert all(n >= 4 for n in counts.values()), counts
    return counts


def produce(bootstrap: str, placed: list[Placed]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for topic, partition, ev in placed:
        producer.produce(
            topic, json.dumps(ev).encode(), key=ev["event_id"].encode(), partition=partition
        )
    assert producer.flush(30) == 0


class Collector:
    """Reads interactions.scored and patterns.candidates in a thread: the corpus's records."""

    def __init__(self, bootstrap: str, ids: set[str]) -> None:
        self.ids = ids
        self.records: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        self.candidates: dict[str, int] = dict.fromkeys(ids, 0)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"det-read-{RUN}-{uuid.uuid4().hex[:4]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.subscribe(["interactions.scored", "patterns.candidates"])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            raw_key, value = msg.key(), msg.value()
            key = raw_key.decode() if raw_key else ""
            if key not in self.ids or value is None:
                continue
            with self.lock:
                if msg.topic() == "patterns.candidates":
                    self.candidates[key] += 1
                else:
                    self.records[key].append(json.loads(value))
        self.consumer.close()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: len(v) for k, v in self.records.items()}

    def wait(self, want: Callable[[dict[str, int]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if want(self.counts()):
                return
            time.sleep(0.5)
        missing = sorted(k for k, n in self.counts().items() if n == 0)[:5]
        raise AssertionError(f"timed out waiting for {what} (e.g. not scored: {missing})")

    def settle(self, seconds: float = 3.0) -> None:
        """Until nothing new came for ``seconds``."""
        last, since = self.counts(), time.monotonic()
        while time.monotonic() - since < seconds:
            time.sleep(0.5)
            now = self.counts()
            if now != last:
                last, since = now, time.monotonic()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("score", "factors", "inputs", "high_value", "scorer_version")}


def metric_sum(worker: WorkerProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in worker.metrics().splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def state_of(worker: WorkerProcess) -> str:
    """The worker's watermark, consumer and stream gauges, for a failure's message."""
    try:
        page = worker.metrics()
    except OSError as exc:
        return f"(no /metrics: {exc})"
    keep = ("learnstream_watermark", "learnstream_events_consumed", "learnstream_late_events")
    return "; ".join(
        line for line in page.splitlines() if line.startswith(keep) and "_bucket" not in line
    )


def replay_to_start(bootstrap: str, group: str) -> None:
    args = [sys.executable, "-m", "learnstream", "replay", "--group", group, "--to-start"]
    for topic in TELEMETRY:
        args += ["--topic", topic]
    env = {**os.environ, "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    out = subprocess.run(
        [*args, "--force"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def stopped(worker: WorkerProcess) -> None:
    code = worker.stop()
    assert code == 0, worker.log()[-3000:]


@pytest.mark.timeout(1500)
def test_replaying_the_worker_group_from_the_start_changes_no_score(
    own_broker: BrokerUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker of its own: its corpus's high-value interactions stay out of other tests'
    # history look-ups, and a backfill of its topics reads nothing but its corpus.
    bootstrap = own_broker.bootstrap_servers
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
    # A failure's message shows the workers' INFO log: rebalances, held events dropped, and a
    # summary line (scored, held, acks waiting) every 5 s.
    monkeypatch.setenv("LEARNSTREAM_TEST_WORKER_LOGLEVEL", "info")
    monkeypatch.setenv("LEARNSTREAM_SUMMARY_INTERVAL_S", "5")
    partitions = telemetry_partitions(bootstrap)
    steady, lagged = corpus(0, partitions), corpus(1, partitions)
    ids = {ev["event_id"] for _, _, ev in steady + lagged}
    app_id = f"det-w-{RUN}"
    collector = Collector(bootstrap, ids)
    try:
        # --- first pass: the worker scores the corpus as it is produced --------------------
        worker = WorkerProcess(bootstrap, tmp_path / "worker", app_id=app_id)
        try:
            produce(bootstrap, steady)
            steady_ids = {ev["event_id"] for _, _, ev in steady}
            collector.wait(
                lambda c: all(c[i] for i in steady_ids), 300, "the first part, first pass"
            )
            on_time = [p for p in lagged if (p[0], p[1]) not in (PAUSED, LAGGING)]
            produce(bootstrap, on_time)
            time.sleep(0.4)
            produce(bootstrap, [p for p in lagged if (p[0], p[1]) == LAGGING])
            time.sleep(2.6)
            produce(bootstrap, [p for p in lagged if (p[0], p[1]) == PAUSED])
            collector.wait(lambda c: all(c.values()), 300, "the second part, first pass")
            collector.settle()
            late_first = metric_sum(worker, "learnstream_late_events_total", kind="late")
            misses = metric_sum(worker, "learnstream_late_events_total", kind="missed")
            forced = metric_sum(worker, "learnstream_watermark_forced_total")
        finally:
            stopped(worker)
        first = {k: comparable(v[0]) for k, v in collector.records.items()}
        mark = collector.counts()

        # --- replay: the same worker, the same state, from the start -----------------------
        replay_to_start(bootstrap, app_id)
        worker = WorkerProcess(bootstrap, tmp_path / "worker", app_id=app_id)
        try:
            try:
                collector.wait(
                    lambda c: all(c[i] > mark[i] for i in ids), 300, "the replay to re-score all"
                )
            except AssertionError as exc:
                counts = collector.counts()
                behind = sorted(i for i in ids if counts[i] <= mark[i])
                raise AssertionError(
                    f"{exc}; {len(behind)} of {len(ids)} not re-scored, e.g. {behind[:5]}; "
                    f"worker's gauges: {state_of(worker)}; worker: {worker.log()[-4000:]}"
                ) from None
            collector.settle()
        finally:
            stopped(worker)
        replayed = {k: comparable(v[mark[k]]) for k, v in collector.records.items()}
        mark = collector.counts()

        # --- a backfill into a new deployment: new group, empty state ----------------------
        worker = WorkerProcess(bootstrap, tmp_path / "fresh", app_id=f"det-f-{RUN}")
        try:
            collector.wait(
                lambda c: all(c[i] > mark[i] for i in ids), 300, "the backfill to score all"
            )
        finally:
            stopped(worker)
        fresh = {k: comparable(v[mark[k]]) for k, v in collector.records.items()}
    finally:
        collector.close()

    changed = sorted(k for k in ids if replayed[k] != first[k])
    assert changed == [], f"{len(changed)} of {len(ids)} changed on the replay, e.g. {changed[:3]}"
    changed = sorted(k for k in ids if fresh[k] != first[k])
    assert changed == [], (
        f"{len(changed)} of {len(ids)} changed on the backfill, e.g. {changed[:3]}"
    )
    # Every high-value decision, hence the same candidates for extraction, each pass (more
    # than once only if a rebalance made a pass re-score something: at-least-once).
    high = {k for k, v in first.items() if v["high_value"]}
    assert all(collector.candidates[k] >= 3 for k in high)
    assert all(collector.candidates[k] == 0 for k in ids - high)

    # Not vacuous: decisions both ways, reuse and novelty at many levels, late events (the
    # paused partition, flagged in the inputs and counted), nothing forced or missed.
    assert 0 < len(high) < len(ids)
    factors = [v["factors"] for v in first.values()]
    assert len({f["reusability"] for f in factors}) >= 3
    assert len({f["novelty"] for f in factors}) >= 5
    late = {k for k, v in first.items() if v["inputs"]["novelty"]["late"]}
    paused_ids = {ev["event_id"] for t, p, ev in lagged if (t, p) == PAUSED}
    lagging_ids = {ev["event_id"] for t, p, ev in lagged if (t, p) == LAGGING}
    assert late & paused_ids and late <= paused_ids | lagging_ids
    assert late_first >= len(late)
    assert misses == 0 and forced == 0
