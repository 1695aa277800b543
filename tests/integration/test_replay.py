"""`learnstream replay` and `learnstream backfill` against the session broker.

On a real Kafka the admin API does everything. The dev broker (librdkafka's mock cluster)
cannot describe consumer groups, so every real run there needs --force; and it rejects
AdminClient offset changes for a group that ever had members, so for subscribed groups the
command commits by briefly joining the group. The tests check whichever applies.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from learnstream.cli import cli
from learnstream.replay_commands import backfill, replay
from streams.producers.ids import derive_event_id, file_identity
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import consume, recent_base_ms
from tests.unit.events import event

pytestmark = pytest.mark.integration

Invoke = Callable[..., Result]
PARTITIONS = 4  # the dev broker auto-creates topics with 4 partitions
TS0 = recent_base_ms()  # never a fixed old date: retention would delete the records


@pytest.fixture
def run(kafka_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """Invoke `learnstream ...` with replay and backfill registered."""
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "data"))
    added = [c for c in (replay, backfill) if c.name not in cli.commands]
    for command in added:
        cli.add_command(command)

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=env)

    yield invoke
    for command in added:
        cli.commands.pop(str(command.name), None)


def produce(bootstrap: str, topic: str, count: int) -> None:
    """``count`` records with timestamps TS0, TS0 + 1 s, ... spread over the partitions."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(
            topic, key=f"k{i}".encode(), value=f"v{i}".encode(), timestamp=TS0 + i * 1000
        )
    assert producer.flush(10) == 0


def consume_all(consumer: Consumer, count: int) -> dict[int, list[tuple[int, int]]]:
    """Poll until ``count`` records arrived; (offset, timestamp) per partition."""
    seen: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 20
    while sum(map(len, seen.values())) < count:
        assert time.monotonic() < deadline, seen
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            seen[msg.partition()].append((msg.offset(), msg.timestamp()[1]))
    return seen


def group_member(bootstrap: str, group: str, topic: str) -> Consumer:
    """A subscribed consumer in ``group`` (a member, like the sink or trainer)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    return consumer


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets per partition (-1001 where none)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(PARTITIONS)]
    )
    result = admin.list_consumer_group_offsets([request])[group].result(10)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def table(output: str, topic: str) -> dict[int, dict[str, str]]:
    """The dry-run table's rows by partition, as header -> cell."""
    header: list[str] = []
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells[:2] == ["TOPIC", "PARTITION"]:
            header = cells
        elif header and cells and cells[0] == topic:
            rows[int(cells[1])] = dict(zip(header, cells[: len(header)], strict=True))
    return rows


def test_dry_run_then_replay_a_subscribed_group_to_start(
    run: Invoke, kafka_env: str, kafka_broker: BrokerUnderTest, unique: str
) -> None:
    topic, group = f"replay-a-{unique}", f"sink-{unique}"
    produce(kafka_env, topic, 40)
    member = group_member(kafka_env, group, topic)
    seen = consume_all(member, 40)
    member.commit(asynchronous=False)
    member.close()
    highs = {p: len(recs) for p, recs in seen.items()}
    assert committed(kafka_env, group, topic) == highs

    dry = run("replay", "--group", group, "--topic", topic, "--to-start", "--dry-run")
    assert dry.exit_code == 0, dry.output
    rows = table(dry.stdout, topic)
    assert sorted(rows) == list(range(PARTITIONS))
    for p, row in rows.items():
        assert row["CURRENT"] == row["HIGH"] == str(highs[p])
        assert (row["NEW"], row["LAG-NOW"], row["LAG-AFTER"]) == ("0", "0", str(highs[p]))
    assert "total: 4 partitions, 4 change; lag now 0, after 40; 40 records to re-process" in (
        dry.stdout
    )
    # A real broker lists the (now empty) membership; the dev broker cannot, so it would refuse.
    assert ("a real run would refuse" in dry.output) == (not kafka_broker.real)
    assert "dry run: nothing changed" in dry.stdout
    assert committed(kafka_env, group, topic) == highs

    if kafka_broker.real:
        done = run("replay", "--group", group, "--topic", topic, "--to-start")
        assert done.exit_code == 0, done.output
        assert f"group {group}: committed new offsets for 4 partitions" in done.stdout
        assert "briefly joining" not in done.output  # the admin API works: no mock fallback
        assert committed(kafka_env, group, topic) == dict.fromkeys(range(PARTITIONS), 0)
        return

    # The dev broker cannot list members, so a real run needs --force.
    refused = run("replay", "--group", group, "--topic", topic, "--to-start")
    assert refused.exit_code == 1
    assert "cannot check whether group" in refused.output
    assert "cannot describe consumer groups" in refused.output
    assert committed(kafka_env, group, topic) == highs

    # Options from the environment, like every other command.
    env = {"LEARNSTREAM_REPLAY_GROUP": group, "LEARNSTREAM_REPLAY_FORCE": "1"}
    done = run("replay", "--topic", topic, "--to-start", env=env)
    assert done.exit_code == 0, done.output
    assert f"group {group}: committed new offsets for 4 partitions" in done.stdout
    assert "committed by briefly joining" in done.output
    assert committed(kafka_env, group, topic) == dict.fromkeys(range(PARTITIONS), 0)


def test_refuses_while_a_member_is_active(
    run: Invoke, kafka_env: str, kafka_broker: BrokerUnderTest, unique: str
) -> None:
    topic, group = f"replay-b-{unique}", f"trainer-{unique}"
    produce(kafka_env, topic, 20)
    member = group_member(kafka_env, group, topic)
    seen = consume_all(member, 20)
    member.commit(asynchronous=False)
    highs = {p: len(recs) for p, recs in seen.items()}
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            member.poll(0.1)

    poller = threading.Thread(target=keep_polling)
    poller.start()
    try:
        refused = run("replay", "--group", group, "--topic", topic, "--to-start")
        assert refused.exit_code == 1
        if kafka_broker.real:  # the broker names the member
            assert f"group {group} has 1 active member(s)" in refused.output, refused.output
        else:
            assert "Stop the group's consumers, then re-run with --force" in refused.output
        # --force skips the check, but the active member still holds partitions: refused.
        forced = run("replay", "--group", group, "--topic", topic, "--to-start", "--force")
        assert forced.exit_code == 1
        if kafka_broker.real:
            assert f"the broker refused to change offsets of {group}" in forced.output
        else:
            assert f"group {group} has other active members: they hold {topic}[" in forced.output
            assert "nothing was changed" in forced.output
        assert committed(kafka_env, group, topic) == highs
    finally:
        stop.set()
        poller.join()
        member.close()

    done = run("replay", "--group", group, "--topic", topic, "--to-start", "--force")
    assert done.exit_code == 0, done.output
    assert committed(kafka_env, group, topic) == dict.fromkeys(range(PARTITIONS), 0)


def test_to_time_shift_by_and_to_offset(run: Invoke, kafka_env: str, unique: str) -> None:
    topic, group = f"replay-c-{unique}", f"worker-{unique}"
    produce(kafka_env, topic, 40)
    # A group position committed without joining the group (assigned partitions).
    reader = Consumer(
        {"bootstrap.servers": kafka_env, "group.id": group, "enable.auto.commit": False}
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = consume_all(reader, 40)
    reader.commit(asynchronous=False)
    reader.close()
    highs = {p: len(recs) for p, recs in seen.items()}
    assert committed(kafka_env, group, topic) == highs

    cut = TS0 + 20_500
    expected = {
        p: min((o for o, ts in recs if ts >= cut), default=highs[p]) for p, recs in seen.items()
    }
    iso = datetime.fromtimestamp(cut / 1000, UTC).isoformat().replace("+00:00", "Z")
    for when in (iso, str(cut)):
        dry = run("replay", "--group", group, "--topic", topic, "--to-time", when, "--dry-run")
        assert dry.exit_code == 0, dry.output
        rows = table(dry.stdout, topic)
        assert {p: int(r["NEW"]) for p, r in rows.items()} == expected
        assert {p: int(r["LAG-AFTER"]) for p, r in rows.items()} == {
            p: highs[p] - expected[p] for p in highs
        }
        assert sum(highs[p] - expected[p] for p in highs) == 19  # records 21..39

    moved = run("replay", "--group", group, "--topic", topic, "--to-time", iso, "--force")
    assert moved.exit_code == 0, moved.output
    assert "joining" not in moved.output  # a group without members: the admin API works
    assert committed(kafka_env, group, topic) == expected

    shifted = run("replay", "--group", group, "--topic", topic, "--shift-by", "-2", "--force")
    assert shifted.exit_code == 0, shifted.output
    assert committed(kafka_env, group, topic) == {p: max(0, o - 2) for p, o in expected.items()}

    one = run(
        "replay", "--group", group, "--topic", topic, "--partition", "1", "--to-offset", "3",
        "--force",
    )  # fmt: skip
    assert one.exit_code == 0, one.output
    assert sorted(table(one.stdout, topic)) == [1]
    after = committed(kafka_env, group, topic)
    assert after[1] == 3, one.output
    assert {p: o for p, o in after.items() if p != 1} == {
        p: max(0, o - 2) for p, o in expected.items() if p != 1
    }

    missing = run("replay", "--group", group, "--topic", f"nope-{unique}", "--to-end")
    assert missing.exit_code == 1
    assert f"topic 'nope-{unique}' does not exist" in missing.output


def test_backfill_twice_yields_the_same_event_ids(
    run: Invoke, kafka_env: str, tmp_path: Path, unique: str
) -> None:
    key = f"c-{unique}"
    lines = [
        json.dumps(event("hybrid", "route_decided", conversation_id=key, query=f"q{i}")).encode()
        for i in range(4)
    ]
    lines.insert(2, b"{broken")
    path = tmp_path / "hybrid-events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    archived = tmp_path / "hybrid-events.jsonl.1.gz"
    archived.write_bytes(gzip.compress(path.read_bytes()))

    first = run("backfill", "--source", "hybrid", str(path))
    assert first.exit_code == 0, first.output
    assert f"{path}: sent 4, invalid 1 (to telemetry.dlq); route_decided 4" in first.stdout
    again = run("backfill", str(path), str(archived), env={"LEARNSTREAM_BACKFILL_SOURCE": "hybrid"})
    assert again.exit_code == 0, again.output
    assert f"{archived}: sent 4, invalid 1" in again.stdout
    assert "hybrid: 2 files, sent 8, invalid 2" in again.stdout

    identity = file_identity(lines[0])
    offsets, offset = [], 0
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    expected = {derive_event_id("hybrid", identity, offsets[i]) for i in (0, 1, 3, 4)}
    got = consume(
        kafka_env,
        ["telemetry.hybrid"],
        keep=lambda r: r.key == key.encode(),
        until=lambda kept: len(kept) >= 12,
        settle=0.5,
    )
    assert len(got) == 12
    assert {r.json()["event_id"] for r in got} == expected
    assert all(r.headers["event_id"].decode() == r.json()["event_id"] for r in got)


def test_readme_shift_by_minus_one_leaves_empty_partitions_alone(
    run: Invoke, kafka_env: str, kafka_broker: BrokerUnderTest, unique: str
) -> None:
    """README: ``replay --group learnstream-trainer --topic training.triggers --shift-by -1``.

    Like training.triggers (keyed by base model), only some partitions hold records and carry
    a committed offset: those are shifted, the empty ones are left as they are and said so.
    """
    topic, group = f"replay-e-{unique}", f"trainer-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_env})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(20)
    producer = Producer({"bootstrap.servers": kafka_env})
    for i in range(5):
        producer.produce(topic, value=f"trigger {i}".encode(), partition=i % 2)
    assert producer.flush(10) == 0
    reader = Consumer(
        {"bootstrap.servers": kafka_env, "group.id": group, "enable.auto.commit": False}
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    deadline, read = time.monotonic() + 20, 0
    while read < 5:
        assert time.monotonic() < deadline
        msg = reader.poll(0.2)
        read += msg is not None and msg.error() is None
    reader.commit(asynchronous=False)
    reader.close()
    assert committed(kafka_env, group, topic) == {0: 3, 1: 2, 2: -1001, 3: -1001}

    args = ["replay", "--group", group, "--topic", topic, "--shift-by", "-1"]
    force = [] if kafka_broker.real else ["--force"]  # the dev broker cannot describe groups
    dry = run(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    rows = table(dry.stdout, topic)
    assert {p: r["NEW"] for p, r in rows.items()} == {0: "2", 1: "1", 2: "-", 3: "-"}
    for p in (2, 3):
        line = next(x for x in dry.stdout.splitlines() if x.split()[:2] == [topic, str(p)])
        assert "empty, nothing committed: left as it is" in line
    assert "2 change" in dry.stdout and "2 left as they are" in dry.stdout

    done = run(*args, *force)
    assert done.exit_code == 0, done.output
    assert "committed new offsets for 2 partitions (2 empty ones left as they are)" in done.stdout
    assert committed(kafka_env, group, topic) == {0: 2, 1: 1, 2: -1001, 3: -1001}

    # A partition with records but nothing committed is still named, and nothing changes.
    producer.produce(topic, value=b"late trigger", partition=3)
    assert producer.flush(10) == 0
    refused = run(*args, *force)
    assert refused.exit_code == 1
    assert f"{topic}[3]: no committed offset to shift" in refused.output
    assert "--partition" in refused.output
    assert committed(kafka_env, group, topic) == {0: 2, 1: 1, 2: -1001, 3: -1001}
