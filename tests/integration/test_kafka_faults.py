"""Crashes and failover on a real Kafka: nothing valid is lost, nothing is stored twice.

- two workers and two sinks share the partitions; one of each is killed with -9 mid-stream;
- the broker is killed with -9 and restarted mid-stream (the SDK spools and resends);
- on three nodes, a partition leader is killed while the SDK produces with acks=all.
Each drives the real processes (`learnstream worker`, `learnstream sink`, the producer SDK).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from learnstream.core.settings import load_settings
from learnstream.postgres import connect
from streams.producers import TelemetryProducer
from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import (
    FAST_FAILOVER_SINK,
    FAST_FAILOVER_WORKER,
    Sink,
    WorkerProcess,
    fault_report,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rows(pg_url: str, ids: set[str]) -> tuple[int, int]:
    """(rows, distinct event ids) among ``ids`` in PostgreSQL."""
    import psycopg

    try:
        with connect(pg_url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM telemetry_events "
                "WHERE event_id = ANY(%s)",
                (list(ids),),
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0, 0
    assert row is not None
    return int(row[0]), int(row[1])


def _members(bootstrap: str, group: str) -> int:
    """Members of a stable consumer group (0 while it rebalances or is unknown)."""
    from confluent_kafka import ConsumerGroupState

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        info = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except Exception:  # the coordinator may still be loading the group
        return 0
    return len(info.members) if info.state == ConsumerGroupState.STABLE else 0


def _read_topic(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """Every record of ``topic`` now, as (key, value): each partition read up to its end."""
    from confluent_kafka import TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "faults-probe", "enable.auto.commit": False}
    )
    out: list[tuple[str, bytes]] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        left = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in left])
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(((msg.key() or b"").decode(errors="replace"), msg.value() or b""))
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                left.discard(msg.partition() or 0)
    finally:
        consumer.close()
    return out


def _missing(pg_url: str, bootstrap: str, ids: set[str]) -> str:
    """Where the events not in PostgreSQL got to: for a failure message."""
    with connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT event_id FROM telemetry_events WHERE event_id = ANY(%s)", (list(ids),)
        ).fetchall()
    missing = ids - {r[0] for r in rows}
    where = {}
    for topic in ("telemetry.vscode", "interactions.scored", "telemetry.dlq"):
        try:
            records = _read_topic(bootstrap, topic)
        except Exception as exc:  # a diagnostic only
            where[topic] = f"unreadable: {exc}"
            continue
        # Telemetry records are keyed by session: look for the ids in the values.
        text = b"\n".join(v for _, v in records)
        found = {i for i in ids if f'"{i}"'.encode() in text}
        where[topic] = (
            f"{len(found & missing)} missing, {len(found)} of all {len(ids)} "
            f"({len(records)} records read)"
        )
    return f"{len(missing)} missing (e.g. {sorted(missing)[:4]}); on the topics: {where}"


def _events(run: str, start: int, count: int) -> list[dict[str, Any]]:
    t0 = datetime(2021, 3, 1, tzinfo=UTC)
    return [
        {
            "event_type": "session_started",
            "event_id": f"f{i}-{run}",
            "session_id": f"s{i % 24}-{run}",
            "timestamp": (t0 + timedelta(seconds=i)).isoformat(),
        }
        for i in range(start, start + count)
    ]


def _producer(bootstrap: str, tmp_path: Path, name: str) -> TelemetryProducer:
    settings = load_settings(
        data_dir=tmp_path / f"sdk-{name}",
        kafka={"bootstrap_servers": bootstrap},
        producer={"delivery_timeout_ms": 5000},
    )
    return TelemetryProducer(source="vscode", settings=settings)


def test_killed_worker_and_sink_lose_nothing(
    real_kafka: BrokerUnderTest, postgres_url: str, tmp_path: Path
) -> None:
    bootstrap = real_kafka.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    app_id, group = f"faults-w-{run}", f"faults-s-{run}"

    def start_worker(i: int) -> WorkerProcess:
        return WorkerProcess(
            bootstrap,
            tmp_path / f"w{i}",
            app_id=app_id,
            LEARNSTREAM_WORKER__EXTRACT="false",
            **FAST_FAILOVER_WORKER,
        )

    # Scale out as an operator does: the second worker joins once the first is working.
    workers = [start_worker(0)]
    sinks = [
        Sink(bootstrap, postgres_url, group, tmp_path / f"sink{i}.log", **FAST_FAILOVER_SINK)
        for i in range(2)
    ]
    producer = _producer(bootstrap, tmp_path, "kill")
    try:
        warm = _events(run, 0, 24)
        for e in warm:
            producer.emit(e)
        assert producer.drain(60) == 0
        ids = {e["event_id"] for e in warm}
        wait_for(lambda: _rows(postgres_url, ids)[1] == len(ids), 240, "the first worker's rows")
        workers.append(start_worker(1))
        more = _events(run, 24, 24)
        for e in more:
            producer.emit(e)
        assert producer.drain(60) == 0
        ids |= {e["event_id"] for e in more}

        def shared() -> bool:
            # Both workers and both sinks are members of their (stable) groups.
            return (
                _members(bootstrap, app_id) == 2
                and _members(bootstrap, group) == 2
                and _rows(postgres_url, ids)[1] == len(ids)
            )

        try:
            wait_for(shared, 240, "both workers and sinks in their groups and the first rows")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {[w.log()[-1500:] for w in workers]}") from None

        stop = threading.Event()
        sent: list[dict[str, Any]] = []

        def stream() -> None:
            n = 48
            while not stop.is_set() and n < 648:
                batch = _events(run, n, 20)
                for e in batch:
                    producer.emit(e)
                sent.extend(batch)
                n += 20
                time.sleep(0.1)

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        workers[0].proc.send_signal(signal.SIGKILL)
        sinks[0].kill()
        thread.join(60)
        stop.set()
        assert producer.drain(120) == 0
        ids |= {e["event_id"] for e in sent}
        assert len(ids) == 648
        try:
            got = wait_for(
                lambda: (r := _rows(postgres_url, ids))[1] == len(ids) and r,
                240,
                "every event in PostgreSQL after the kills",
            )
        except AssertionError as exc:
            rows = _rows(postgres_url, ids)
            raise AssertionError(
                f"{exc}: {rows[1]} of {len(ids)} stored, {producer.spooled} spooled; "
                f"{_missing(postgres_url, bootstrap, ids)}; "
                f"worker: {workers[1].log()[-3000:]}\nsink: {sinks[1].log()[-3000:]}"
            ) from None
        fault_report(
            "kill -9 of a worker and a sink (2 of each)",
            sent=len(ids),
            stored=got[0],
            distinct=got[1],
            recovery_s=time.monotonic() - killed_at,
        )
        assert got == (len(ids), len(ids))  # each event once, none lost
    finally:
        producer.close(10)
        for s in sinks:
            s.stop()
        for w in workers:
            w.stop()


@pytest.fixture
def own_kafka(local_kafka: BrokerUnderTest, own_broker: BrokerUnderTest) -> Any:
    """A one-node Kafka of this test's own, to kill and restart."""
    return own_broker.kafka


def test_broker_killed_and_restarted_mid_stream_loses_nothing(
    own_kafka: Any, postgres_url: str, tmp_path: Path
) -> None:
    bootstrap = own_kafka.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    worker = WorkerProcess(
        bootstrap, tmp_path / "w", app_id=f"restart-w-{run}", LEARNSTREAM_WORKER__EXTRACT="false"
    )
    sink = Sink(bootstrap, postgres_url, f"restart-s-{run}", tmp_path / "sink.log")
    producer = _producer(bootstrap, tmp_path, "restart")
    try:
        first = _events(run, 0, 100)
        for e in first:
            producer.emit(e)
        assert producer.drain(60) == 0
        ids = {e["event_id"] for e in first}
        wait_for(lambda: _rows(postgres_url, ids)[1] == 100, 240, "the first rows")

        own_kafka.kill_node(1)
        second = _events(run, 100, 100)
        for e in second:
            producer.emit(e)  # the broker is gone: these go to the spool
        time.sleep(3)
        own_kafka.start_node(1)
        back_at = time.monotonic()
        assert producer.drain(120) == 0, "the spool was not resent"
        ids |= {e["event_id"] for e in second}
        got = wait_for(
            lambda: (r := _rows(postgres_url, ids))[1] == len(ids) and r,
            240,
            "every event in PostgreSQL after the broker restart",
        )
        fault_report(
            "broker kill -9 and restart (3 s down)",
            sent=200,
            stored=got[0],
            distinct=got[1],
            recovery_s=time.monotonic() - back_at,
        )
        assert got == (200, 200), (worker.log()[-2000:], sink.log()[-2000:])

        # The broker goes away again while `produce send` runs on a disk too small for its
        # spool: what the disk refuses waits in memory, and everything arrives once.
        own_kafka.kill_node(1)
        third = _events(run, 200, 300)
        path = tmp_path / "third.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in third))
        send = _send_on_a_full_disk(bootstrap, path, tmp_path / "full", limit_kib=32)
        time.sleep(8)
        own_kafka.start_node(1)
        back_at = time.monotonic()
        out, _ = send.communicate(timeout=240)
        assert send.returncode == 0, out
        assert "the disk refused the spool's write" in out, out
        ids |= {e["event_id"] for e in third}
        got = wait_for(
            lambda: (r := _rows(postgres_url, ids))[1] == len(ids) and r,
            240,
            "every event in PostgreSQL after the send on a full disk",
        )
        fault_report(
            "spool disk full (32 KiB) while the broker is down 8 s",
            sent=300,
            stored=got[0] - 200,
            distinct=got[1] - 200,
            recovery_s=time.monotonic() - back_at,
        )
        assert got == (500, 500), (worker.log()[-2000:], sink.log()[-2000:])
    finally:
        producer.close(10)
        assert sink.stop() == 0, sink.log()[-2000:]
        assert worker.stop() == 0, worker.log()[-2000:]


def _send_on_a_full_disk(
    bootstrap: str, path: Path, data_dir: Path, limit_kib: int
) -> subprocess.Popen[str]:
    """`learnstream produce send` whose files cannot grow past ``limit_kib`` KiB (``ulimit
    -f``: a write past it fails with EFBIG, as on a full disk; SIGXFSZ ignored)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")},
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LEARNSTREAM_DATA_DIR": str(data_dir),
        "LEARNSTREAM_PRODUCER__DELIVERY_TIMEOUT_MS": "2000",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    send = [sys.executable, "-m", "learnstream", "produce", "send", "--source", "vscode"]
    script = f'ulimit -f {limit_kib}; trap "" XFSZ; exec "$@"'
    return subprocess.Popen(
        ["bash", "-c", script, "send", *send, "--timeout", "180", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_leader_killed_on_three_nodes_loses_nothing_with_acks_all(
    local_kafka: BrokerUnderTest, tmp_path: Path
) -> None:
    from learnstream.localkafka import LocalKafka

    run = uuid.uuid4().hex[:8]
    with LocalKafka(tmp_path / "three", nodes=3, heap="384m") as kafka:
        bootstrap = kafka.bootstrap_servers
        producer = _producer(bootstrap, tmp_path, "three")
        try:
            warm = _events(run, 0, 30)
            for e in warm:
                producer.emit(e)
            assert producer.drain(60) == 0
            meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
            partitions = meta.topics["telemetry.vscode"].partitions
            assert all(len(p.replicas) == 3 for p in partitions.values())
            leader = partitions[0].leader

            sent = list(warm)
            stop = threading.Event()

            def stream() -> None:
                n = 30
                while not stop.is_set() and n < 630:
                    batch = _events(run, n, 20)
                    for e in batch:
                        producer.emit(e)
                    sent.extend(batch)
                    n += 20
                    time.sleep(0.05)

            thread = threading.Thread(target=stream)
            thread.start()
            time.sleep(0.5)
            killed_at = time.monotonic()
            kafka.kill_node(leader)
            thread.join(60)
            stop.set()
            assert producer.drain(120) == 0, "acknowledged = delivered: the spool drained"
            recovered = time.monotonic()
        finally:
            producer.close(10)
        want = {e["event_id"] for e in sent}
        assert len(want) == 630
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"check-{run}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe(["telemetry.vscode"])
        seen: set[str] = set()
        records = 0
        deadline = time.monotonic() + 60
        try:
            while seen < want and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    seen.add(json.loads(msg.value())["event_id"])
                    records += 1
        finally:
            consumer.close()
        fault_report(
            "partition-leader kill -9 on 3 nodes (acks=all)",
            sent=len(want),
            stored=records,
            distinct=len(seen & want),
            recovery_s=recovered - killed_at,
            where="records on the topic",
        )
        assert want - seen == set(), f"{len(want - seen)} acknowledged events lost"


def test_worker_killed_during_parallel_sends_resumes_every_partition(
    real_kafka: BrokerUnderTest, own_broker: BrokerUnderTest, postgres_url: str, tmp_path: Path
) -> None:
    """Four `produce send` runs in parallel (the example files), the only worker killed with
    -9 about 2 s in and restarted: every valid event reaches PostgreSQL, exactly once.

    On a broker of its own: the examples' high-value interactions must not reach the other
    tests' workers, which read the shared topics from the start."""
    from schemas import parse_event

    bootstrap = own_broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    root = Path(__file__).resolve().parents[2]
    files, ids = [], set()
    for path in sorted((root / "examples").glob("*-events.jsonl")):
        source = path.name.split("-")[0]
        out = []
        for n, text in enumerate(path.read_text().splitlines()):
            line = text
            try:
                doc = json.loads(text)
                doc["event_id"] = f"ex{n}-{source}-{run}"
                line = json.dumps(doc)
                parse_event(source, line)
                ids.add(doc["event_id"])
            except Exception:  # kept as it is: the invalid lines of the examples
                pass
            out.append(line)
        copy = tmp_path / path.name
        copy.write_text("\n".join(out) + "\n")
        files.append((source, copy))
    app_id = f"killsend-w-{run}"
    sink = Sink(bootstrap, postgres_url, f"killsend-s-{run}", tmp_path / "sink.log")
    worker_env = {"LEARNSTREAM_WORKER__EXTRACT": "false", **FAST_FAILOVER_WORKER}
    worker = WorkerProcess(bootstrap, tmp_path / "w", app_id=app_id, **worker_env)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")},
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LEARNSTREAM_DATA_DIR": str(tmp_path / "send"),
    }
    try:
        wait_for(lambda: _members(bootstrap, app_id) == 1, 240, "the worker in its group")
        sends = [
            subprocess.Popen(
                [sys.executable, "-m", "learnstream", "produce", "send", "--source", source,
                 "--spool-name", f"send-{source}", str(path)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            for source, path in files
        ]  # fmt: skip
        time.sleep(2)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        for p in sends:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out
        worker = WorkerProcess(bootstrap, tmp_path / "w", app_id=app_id, **worker_env)
        restarted_at = time.monotonic()
        try:
            got = wait_for(
                lambda: (r := _rows(postgres_url, ids))[1] == len(ids) and r,
                180,
                "every event in PostgreSQL after the restart",
            )
        except AssertionError as exc:
            rows = _rows(postgres_url, ids)
            raise AssertionError(
                f"{exc}: {rows[1]} of {len(ids)}; {worker.log()[-3000:]}"
            ) from None
        fault_report(
            "kill -9 of the only worker during 4 parallel sends, restart",
            sent=len(ids),
            stored=got[0],
            distinct=got[1],
            recovery_s=time.monotonic() - restarted_at,
        )
        assert got == (len(ids), len(ids))
    finally:
        sink.stop()
        worker.stop()


def test_trainer_killed_mid_job_trains_again_and_publishes_once(
    own_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    """`kill -9` of the trainer while it trains: the trigger's offset is not committed, so the
    restarted trainer reads it again and resumes the job; one adapter version, one result."""
    from schemas.topics import TRAINING_RESULTS, TRAINING_TRIGGERS
    from schemas.training import TrainingResult, TrainingTrigger, TriggerReason
    from tests.integration.kafka_helpers import consume
    from tests.tinymodel import FAST, build_tiny_model, write_dataset
    from trainers.adapters import AdapterStore

    bootstrap = own_broker.bootstrap_servers
    model = str(build_tiny_model(tmp_path / "model"))
    data_dir = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")},
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LEARNSTREAM_DATA_DIR": str(data_dir),
        "LEARNSTREAM_BASE_MODEL": model,
        **{f"LEARNSTREAM_TRAINING__{k.upper()}": str(v) for k, v in FAST.items()},
        "LEARNSTREAM_TRAINING__MAX_STEPS": "200",  # long enough to be killed mid-training
        **FAST_FAILOVER_SINK,  # the restarted trainer joins once the dead one's session ends
    }
    subprocess.run(
        [sys.executable, "-m", "learnstream", "topics", "create"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    settings = load_settings(data_dir=data_dir, base_model=model)
    write_dataset(settings.dataset_path, queries=40)
    registry = AdapterStore.for_settings(settings, model)
    trigger = TrainingTrigger(
        trigger_id=f"kill-{uuid.uuid4().hex[:8]}",
        base_model=model,
        reasons=[TriggerReason.MANUAL],
    )

    def start(name: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "learnstream", "trainer"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    first = start("trainer1")
    second = None
    try:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(
            TRAINING_TRIGGERS.name, key=model.encode(), value=trigger.model_dump_json().encode()
        )
        assert producer.flush(30) == 0

        def running() -> bool:
            job = registry.read_job(trigger.trigger_id)
            return job is not None and job.state == "running"

        wait_for(running, 180, "the first trainer's job to run")
        log1 = tmp_path / "trainer1.log"
        wait_for(lambda: "train step 20/" in log1.read_text(), 180, "training steps under way")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        second = start("trainer2")
        restarted_at = time.monotonic()

        def ours(record: Any) -> bool:
            return bool(record.json().get("trigger_id") == trigger.trigger_id)

        published = consume(
            bootstrap,
            [TRAINING_RESULTS.name],
            until=lambda kept: len(kept) >= 1,
            keep=ours,
            timeout=300,
            settle=3.0,
        )
        recovery = time.monotonic() - restarted_at
        results = [TrainingResult.model_validate_json(r.value) for r in published]
        job = registry.read_job(trigger.trigger_id)
        fault_report(
            "kill -9 of the trainer mid-job, restart",
            sent=1,
            stored=len(results),
            distinct=len({r.trigger_id for r in results}),
            recovery_s=recovery,
            where="training results",
        )
        assert len(results) == 1, results  # published once
        assert results[0].status in ("promoted", "rejected"), results[0].reason
        assert registry.versions() == [1]  # one adapter version: no job trained twice over
        assert job is not None and job.state == "done" and job.attempts == 2, job
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()


LLM_TASKS = [
    ("Write a pytest fixture that yields a database connection", "db"),
    ("Set a static IP address on NixOS for the ens3 interface", "nixos"),
    ("Share a HashMap between Rust threads with Arc and Mutex", "rust"),
    ("Add a Kubernetes liveness probe to a Python HTTP service", "k8s"),
    ("Parse a CSV file with the Go standard library encoding/csv", "csv"),
    ("Debounce a search box in TypeScript without a library", "debounce"),
    ("Rotate nginx logs daily with logrotate and keep 14 days", "logrotate"),
    ("Profile a slow PostgreSQL query with EXPLAIN ANALYZE", "explain"),
]


def _candidate(run: str, n: int, query: str, topic: str) -> dict[str, Any]:
    answer = (
        f"Here is how to handle {topic}, step by step.\n1. Set up the {topic} part.\n"
        f"2. Apply the {topic} change.\n3. Check the {topic} result.\n"
        f"```\n# {topic}\nrun --{topic} --check\n```\nThis keeps the {topic} change safe."
    )
    return {
        "event": "task_completed",
        "event_id": f"llm{n}-{run}",
        "task_id": f"llmtask{n}-{run}",
        "prompt": query,
        "output": answer,
        "iteration": 1,
        "exit_code": 0,
        "user_feedback": 1,
        "context": {"files_modified": ["a.py", "b.py", "c.py", "d.py"], "tools_used": ["pytest"]},
        "timestamp": (datetime(2022, 5, 1, tzinfo=UTC) + timedelta(minutes=n)).isoformat(),
    }


def test_llm_down_then_slow_every_candidate_learned_once(
    own_broker: BrokerUnderTest, tmp_path: Path
) -> None:
    """The extractor's LLM endpoint refuses connections, then answers slowly (some replies
    past the client's timeout): every high-value interaction is still learned exactly once
    (the heuristic stands in while the circuit is open), and the LLM takes over again."""
    from extractors.fakellm import FakeChatServer, Reply
    from learnstream.core.net import free_port

    bootstrap = own_broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    port = free_port()
    worker = WorkerProcess(
        bootstrap,
        tmp_path / "w",
        app_id=f"llm-w-{run}",
        LEARNSTREAM_BASE_MODEL=f"llm-fault-{run}",
        LEARNSTREAM_WORKER__TRIGGERS="false",
        LEARNSTREAM_EXTRACT__LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
        LEARNSTREAM_EXTRACT__TIMEOUT_S="2",
        LEARNSTREAM_EXTRACT__MAX_RETRIES="1",
        LEARNSTREAM_EXTRACT__RETRY_BACKOFF_S="0.2",
        LEARNSTREAM_EXTRACT__BREAKER_FAILURE_THRESHOLD="2",
        LEARNSTREAM_EXTRACT__BREAKER_RESET_S="2",
    )
    events = [_candidate(run, n, q, t) for n, (q, t) in enumerate(LLM_TASKS)]
    ids = {e["event_id"] for e in events}
    producer = _producer(bootstrap, tmp_path, "llm")
    llm = FakeChatServer(bind_port=port, delay_s=1.0)  # slow: a second a reply
    llm.push([Reply(delay_s=3.0, content="{}"), Reply(delay_s=3.0, content="{}")])  # timeouts

    def learned() -> dict[str, list[str]]:
        from confluent_kafka import KafkaException

        out: dict[str, list[str]] = {}
        try:
            records = _read_topic(bootstrap, "patterns.learned")
        except KafkaException:  # a new topic whose leader is not elected yet
            return out
        for _, value in records:
            doc = json.loads(value)
            if doc.get("event_id") in ids:
                out.setdefault(doc["event_id"], []).append(doc["pattern"]["extractor"])
        return out

    try:
        for e in events[:4]:
            producer.emit(e, source="ralph")
        assert producer.drain(60) == 0
        down = {e["event_id"] for e in events[:4]}
        wait_for(
            lambda: down <= set(learned()), 300, "the candidates learned while the LLM is down"
        )
        llm.start()
        back_at = time.monotonic()
        for e in events[4:]:  # one at a time: each meets the circuit as the last one left it
            producer.emit(e, source="ralph")
            assert producer.drain(60) == 0
            wait_for(lambda e=e: e["event_id"] in learned(), 120, "a candidate, the LLM slow")
        time.sleep(3)  # anything learned twice would show by now
        got = learned()
        dataset = worker.data_dir / "dataset" / "dataset.jsonl"
        lines = (
            [json.loads(x) for x in dataset.read_text().splitlines()] if dataset.exists() else []
        )
        per_event = [x.get("event_id") for x in lines if x.get("event_id") in ids]
        fault_report(
            "LLM endpoint down, then slow (1-3 s a reply, 2 s timeout)",
            sent=len(ids),
            stored=sum(len(v) for v in got.values()),
            distinct=len(got),
            recovery_s=time.monotonic() - back_at,
            where="patterns learned",
        )
        assert all(len(v) == 1 for v in got.values()), got  # each candidate once
        assert all(got[i] == ["heuristic"] for i in down), got  # the circuit was open
        assert "llm" in {x for i in ids - down for x in got[i]}, got  # the LLM took over
        assert len(per_event) == len(set(per_event)), per_event  # no dataset line twice
        assert llm.requests, "the LLM was never asked"
    finally:
        llm.stop()
        producer.close(10)
        assert worker.stop() == 0, worker.log()[-3000:]
