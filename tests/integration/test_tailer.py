"""File tailers against the dev broker: appends, partial lines, rotation, truncation, restart,
dead letters, backfill, several files per process, and the real CLI with SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from learnstream.core.settings import load_settings
from schemas import parse_event
from streams.producers.ids import derive_event_id, file_identity
from streams.producers.tailer import Checkpoint, TailerStats, checkpoint_path, run_tailers
from tests.unit.events import event

pytestmark = pytest.mark.integration

POLL = 0.02
GRACE = 0.5


# --- reading topics back ---------------------------------------------------------------------


@dataclass
class Rec:
    """A consumed record."""

    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def event_id(self) -> str:
        return self.headers.get("event_id", b"").decode()

    def json(self) -> Any:
        return json.loads(self.value)


class Reader:
    """Reads topics from the beginning (all partitions, no group) and keeps matching records.

    Topics are shared by every test of the session, so ``keep`` selects this test's records.
    Records accumulate over calls, so a test can check for duplicates across phases.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], keep: Callable[[Rec], bool]) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-tailer-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self.topics = list(topics)
        self.assigned: set[str] = set()
        self.keep = keep
        self.records: list[Rec] = []

    def _assign(self) -> None:
        missing = [t for t in self.topics if t not in self.assigned]
        if not missing:
            return
        parts = []
        for topic in missing:
            md = self.consumer.list_topics(topic, timeout=5).topics.get(topic)
            if md is None or md.error is not None or not md.partitions:
                continue
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
            self.assigned.add(topic)
        if parts:
            self.consumer.incremental_assign(parts)

    def read(self, seconds: float) -> None:
        """Read for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._assign()
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            rec = Rec(
                msg.topic(),
                msg.key(),
                msg.value() or b"",
                {k: v for k, v in (msg.headers() or [])},
            )
            if self.keep(rec):
                self.records.append(rec)

    def wait(self, predicate: Callable[[list[Rec]], bool], timeout: float = 20.0) -> list[Rec]:
        """Read until ``predicate(records)`` holds; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.records)} records")
            self.read(0.1)
        return self.records

    def wait_ids(self, ids: Iterable[str], settle: float = 0.5) -> Counter[str]:
        """Wait for every id in ``ids``, read ``settle`` more seconds, and count ids seen."""
        want = set(ids)
        self.wait(lambda recs: want <= {r.event_id for r in recs})
        self.read(settle)
        return Counter(r.event_id for r in self.records)

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def reader_for(kafka_env: str) -> Iterator[Callable[..., Reader]]:
    readers: list[Reader] = []

    def make(topics: Iterable[str], keep: Callable[[Rec], bool]) -> Reader:
        r = Reader(kafka_env, topics, keep)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()


# --- writing files ----------------------------------------------------------------------------


def ralph(marker: str, n: int, **changes: Any) -> bytes:
    """A valid ralph line (with newline) whose task id carries the test's marker."""
    data = event("ralph", "iteration_started", task_id=f"{marker}-task", iteration=n, **changes)
    return json.dumps(data).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def expected_ids(source: str, content: bytes, *, skip_blank: bool = True) -> list[str]:
    """The ids the tailer must give the lines of ``content`` (a whole file)."""
    identity = file_identity(content.split(b"\n", 1)[0])
    ids, pos = [], 0
    for ln in content.splitlines(keepends=True):
        if ln.strip() or not skip_blank:
            ids.append(derive_event_id(source, identity, pos))
        pos += len(ln)
    return ids


def marked(marker: str) -> Callable[[Rec], bool]:
    return lambda r: marker.encode() in r.value


# --- running tailers in a thread --------------------------------------------------------------


class Running:
    """`run_tailers` in a thread, stopped with its stop event."""

    def __init__(self, specs: list[tuple[str, Path]], **kw: Any) -> None:
        self.stop = threading.Event()
        self.stats: list[TailerStats] | None = None
        self.error: BaseException | None = None
        self.settings = load_settings()
        kw.setdefault("poll_interval", POLL)
        kw.setdefault("rotate_grace", GRACE)
        kw.setdefault("registry", CollectorRegistry())

        def target() -> None:
            try:
                self.stats = run_tailers(self.settings, specs, stop=self.stop, **kw)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def finish(self) -> list[TailerStats]:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "run_tailers did not stop"
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


@contextmanager
def tailing(specs: list[tuple[str, Path]], **kw: Any) -> Iterator[Running]:
    running = Running(specs, **kw)
    try:
        yield running
    finally:
        if running.thread.is_alive():
            running.finish()


def checkpoint(source: str, path: Path) -> Checkpoint:
    return Checkpoint.from_json(checkpoint_path(load_settings(), source, path).read_bytes())


# --- tests ------------------------------------------------------------------------------------


def test_appended_lines_arrive_with_ids_keys_and_headers(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph-events.jsonl"  # does not exist yet when tailing starts
    reader = reader_for(["telemetry.ralph"], marked(unique))
    with tailing([("ralph", path)]) as running:
        time.sleep(0.1)
        first = ralph(unique, 1) + ralph(unique, 2, event_id=f"{unique}-own-id")
        append(path, first)
        reader.wait_ids([expected_ids("ralph", first)[0], f"{unique}-own-id"])
        more = ralph(unique, 3) + ralph(unique, 4) + ralph(unique, 5)
        append(path, more)
        want = expected_ids("ralph", first + more)
        want[1] = f"{unique}-own-id"  # a line's own event_id is kept
        counts = reader.wait_ids(want)
        [stats] = running.finish()
    assert counts == Counter(want)
    by_id = {r.event_id: r for r in reader.records}
    for n, event_id in enumerate(want, start=1):
        rec = by_id[event_id]
        assert rec.topic == "telemetry.ralph"
        assert rec.key == f"{unique}-task".encode()
        assert rec.headers["source"] == b"ralph"
        assert rec.headers["event_type"] == b"iteration_started"
        assert rec.headers["content-type"] == b"application/json"
        value = rec.json()
        assert value["event_id"] == event_id and value["iteration"] == n
        assert parse_event("ralph", rec.value).record_key() == f"{unique}-task"
    assert (stats.sent, stats.invalid, stats.rotations, stats.truncations) == (5, 0, 0, 0)
    cp = checkpoint("ralph", path)
    assert (cp.position, cp.line_number) == (path.stat().st_size, 5)


def test_partial_line_waits_for_its_newline(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    head = ralph(unique, 1)
    path.write_bytes(head)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    dlq = reader_for(["telemetry.dlq"], lambda r: r.json().get("file") == str(path))
    partial = ralph(unique, 2)
    with tailing([("ralph", path)]) as running:
        reader.wait_ids(expected_ids("ralph", head))
        append(path, partial[:25])
        time.sleep(0.3)  # many polls see the half line
        append(path, partial[25:-1])
        reader.read(0.5)
        assert len(reader.records) == 1, "a partial line was sent"
        append(path, b"\n")
        want = expected_ids("ralph", head + partial)
        counts = reader.wait_ids(want)
        stats = running.finish()
    assert counts == Counter(want)
    assert reader.records[-1].json()["iteration"] == 2
    dlq.read(0.5)
    assert dlq.records == []
    assert stats[0].sent == 2 and stats[0].invalid == 0


def test_rotation_loses_and_duplicates_nothing(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    rotated = tmp_path / "ralph.jsonl.1"
    old = ralph(unique, 1) + ralph(unique, 2)
    path.write_bytes(old)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    with tailing([("ralph", path)], rotate_grace=1.0) as running:
        reader.wait_ids(expected_ids("ralph", old))
        path.rename(rotated)
        new = ralph(unique, 100)
        path.write_bytes(new)
        time.sleep(0.2)  # well within the grace period
        late = ralph(unique, 3) + ralph(unique, 4)  # the writer had not reopened yet
        append(rotated, late)
        old += late
        more = ralph(unique, 101) + ralph(unique, 102)
        append(path, more)
        new += more
        want = expected_ids("ralph", old) + expected_ids("ralph", new)
        counts = reader.wait_ids(want, settle=1.0)
        [stats] = running.finish()
    assert counts == Counter(want), "lost or duplicated across rotation"
    iterations = [r.json()["iteration"] for r in reader.records]
    assert sorted(iterations) == [1, 2, 3, 4, 100, 101, 102]
    assert stats.rotations == 1 and stats.sent == 7
    cp = checkpoint("ralph", path)
    assert (cp.ino, cp.position) == (path.stat().st_ino, path.stat().st_size)


def test_copytruncate_starts_over_from_zero(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    first = ralph(unique, 1) + ralph(unique, 2) + ralph(unique, 3)
    path.write_bytes(first)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    with tailing([("ralph", path)]) as running:
        reader.wait_ids(expected_ids("ralph", first))
        shutil.copy(path, tmp_path / "ralph.jsonl.1")
        with path.open("r+b") as f:
            f.truncate(0)
        time.sleep(0.2)
        second = ralph(unique, 10)  # shorter than the old position
        append(path, second)
        want = expected_ids("ralph", first) + expected_ids("ralph", second)
        reader.wait_ids(want)
        # truncated and at once rewritten past the old position: caught by the first line
        third = b"".join(ralph(unique, n) for n in range(20, 25))
        with path.open("r+b") as f:
            f.truncate(0)
            f.write(third)
        want += expected_ids("ralph", third)
        counts = reader.wait_ids(want)
        [stats] = running.finish()
    assert counts == Counter(want)
    assert len(want) == 9 and stats.truncations == 2 and stats.sent == 9


def test_restart_resumes_from_checkpoint_without_duplicates(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    content = ralph(unique, 1) + ralph(unique, 2) + ralph(unique, 3)
    path.write_bytes(content)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    with tailing([("ralph", path)]) as running:
        reader.wait_ids(expected_ids("ralph", content))
        running.finish()
    cp = checkpoint("ralph", path)
    assert (cp.position, cp.line_number) == (len(content), 3)
    assert cp.identity == file_identity(ralph(unique, 1).rstrip(b"\n"))

    more = ralph(unique, 4) + ralph(unique, 5)
    append(path, more)  # written while no tailer runs
    content += more
    with tailing([("ralph", path)]) as running:
        want = expected_ids("ralph", content)
        counts = reader.wait_ids(want, settle=1.0)
        [stats] = running.finish()
    assert counts == Counter(want), "restart re-sent or lost lines"
    assert stats.sent == 2
    assert checkpoint("ralph", path).position == len(content)


def test_malformed_lines_go_to_the_dlq_with_reason_line_and_raw_text(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    bad_json = b'{"event": "task_submitted", "task_id": "' + unique.encode() + b'", '
    bad_schema = json.dumps(
        {"event": "task_completed", "task_id": f"{unique}-task", "timestamp": "2026-11-02"}
    ).encode()
    not_object = b"[1, 2, 3]"
    content = (
        ralph(unique, 1)
        + bad_json
        + b"\n\n"
        + bad_schema
        + b"\n"
        + ralph(unique, 2)
        + not_object
        + b"\n"
    )
    path.write_bytes(content)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    dlq = reader_for(["telemetry.dlq"], lambda r: r.json().get("file") == str(path))
    with tailing([("ralph", path)]) as running:
        good = expected_ids("ralph", content)
        reader.wait_ids([good[0], good[3]])
        dlq.wait(lambda recs: len(recs) >= 3)
        dlq.read(0.5)
        [stats] = running.finish()
    letters = sorted((r.json() for r in dlq.records), key=lambda d: d["line_number"])
    assert [d["line_number"] for d in letters] == [2, 4, 6]
    assert [base64.b64decode(d["original_b64"]) for d in letters] == [
        bad_json,
        bad_schema,
        not_object,
    ]
    assert all(d["stage"] == "tailer" and d["source"] == "ralph" for d in letters)
    assert "malformed JSON" in letters[0]["error"] and letters[0]["error_kind"] == "malformed"
    assert f"{path} line 4:" in letters[1]["error"]
    assert letters[1]["event_type"] == "task_completed" and "prompt" in letters[1]["error"]
    assert "JSON object" in letters[2]["error"]
    assert (stats.sent, stats.invalid, stats.blank) == (2, 3, 1)


def test_from_start_replays_with_the_same_event_ids(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph.jsonl"
    content = b"".join(ralph(unique, n) for n in range(1, 5))
    path.write_bytes(content)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    want = expected_ids("ralph", content)
    with tailing([("ralph", path)]) as running:
        reader.wait_ids(want)
        running.finish()
    first_values = {r.event_id: r.json() for r in reader.records}
    with tailing([("ralph", path)], from_start=True) as running:
        reader.wait(lambda recs: len(recs) >= 2 * len(want))
        reader.read(0.5)
        [stats] = running.finish()
    assert Counter(r.event_id for r in reader.records) == Counter(want * 2)
    assert {r.event_id: r.json() for r in reader.records[len(want) :]} == first_values
    assert stats.sent == 4


def test_one_process_tails_two_files(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    ralph_path = tmp_path / "ralph-events.jsonl"
    aidb_path = tmp_path / "aidb-events.jsonl"
    reader = reader_for(["telemetry.ralph", "telemetry.aidb"], marked(unique))
    with tailing([("ralph", ralph_path), ("aidb", aidb_path)]) as running:
        r = ralph(unique, 1) + ralph(unique, 2)
        a = b"".join(
            json.dumps(event("aidb", "query", session_id=f"{unique}-s", query=f"q{n}")).encode()
            + b"\n"
            for n in range(3)
        )
        append(ralph_path, r)
        append(aidb_path, a)
        want = expected_ids("ralph", r) + expected_ids("aidb", a)
        counts = reader.wait_ids(want)
        stats = running.finish()
    assert counts == Counter(want)
    topics = Counter(rec.topic for rec in reader.records)
    assert topics == Counter({"telemetry.ralph": 2, "telemetry.aidb": 3})
    assert all(
        rec.key == f"{unique}-s".encode() for rec in reader.records if rec.topic.endswith("aidb")
    )
    assert [(s.source, s.sent) for s in stats] == [("ralph", 2), ("aidb", 3)]
    assert checkpoint("aidb", aidb_path).position == len(a)


def _start_cli(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "learnstream",
            "produce",
            "tail",
            "--source",
            "ralph",
            "--path",
            str(path),
            "--poll-interval",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )


def _sigterm(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_cli_tail_stops_on_sigterm_with_checkpoint_and_resumes(
    kafka_env: str, tmp_path: Path, unique: str, reader_for: Callable[..., Reader]
) -> None:
    path = tmp_path / "ralph-events.jsonl"
    content = ralph(unique, 1) + ralph(unique, 2)
    path.write_bytes(content)
    reader = reader_for(["telemetry.ralph"], marked(unique))
    proc = _start_cli(path)
    try:
        reader.wait_ids(expected_ids("ralph", content))
        append(path, ralph(unique, 3) + ralph(unique, 4)[:10])  # and half of a fourth line
        content += ralph(unique, 3)
        reader.wait_ids(expected_ids("ralph", content))
    finally:
        out = _sigterm(proc)
    assert "no checkpoint, reading from byte 0" in out
    assert "received SIGTERM" in out
    assert "3 sent, 0 invalid" in out
    assert checkpoint("ralph", path).position == len(content)

    append(path, ralph(unique, 4)[10:] + ralph(unique, 5))
    content += ralph(unique, 4) + ralph(unique, 5)
    proc = _start_cli(path)
    try:
        want = expected_ids("ralph", content)
        counts = reader.wait_ids(want, settle=1.0)
    finally:
        out = _sigterm(proc)
    assert counts == Counter(want)
    assert "resuming from the checkpoint at byte" in out
    assert checkpoint("ralph", path).position == len(content)
