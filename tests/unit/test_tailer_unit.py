"""FileTailer without a broker: a fake producer records what would have been sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from learnstream.core.settings import load_settings
from schemas.base import Source, SourceEvent
from schemas.dlq import DEAD_LETTER_MAX_BYTES
from streams.producers.ids import derive_event_id, file_identity
from streams.producers.sender import read_lines, send_lines
from streams.producers.tailer import Checkpoint, FileTailer, _flush_and_checkpoint, read_identity
from tests.unit.events import event


class FakeProducer:
    """Records emits and dead letters."""

    def __init__(self) -> None:
        self.events: list[SourceEvent] = []
        self.dead: list[tuple[bytes, str, dict[str, Any]]] = []

    def emit(self, ev: SourceEvent) -> str:
        self.events.append(ev)
        return ev.event_id or ""

    def dead_letter(self, raw: bytes, reason: str, **fields: Any) -> None:
        self.dead.append((raw, reason, fields))

    @property
    def ids(self) -> list[str]:
        return [e.event_id or "" for e in self.events]


def line(n: int, **changes: Any) -> bytes:
    """One valid ralph JSONL line (with its newline)."""
    return json.dumps(event("ralph", "iteration_started", iteration=n, **changes)).encode() + b"\n"


def offsets(data: bytes) -> list[int]:
    """Byte offsets of the lines of ``data``."""
    out, pos = [], 0
    for ln in data.splitlines(keepends=True):
        out.append(pos)
        pos += len(ln)
    return out


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(data_dir=tmp_path / "data", max_event_bytes=4096)


def make(
    settings: Any, path: Path, producer: FakeProducer | None = None, **kw: Any
) -> tuple[FileTailer, FakeProducer]:
    producer = producer or FakeProducer()
    tailer = FileTailer("ralph", path, producer, settings, **kw)
    tailer.start()
    return tailer, producer


def drain(tailer: FileTailer, rounds: int = 50) -> None:
    for _ in range(rounds):
        if not tailer.poll():
            return
    raise AssertionError("tailer never caught up")


def save(tailer: FileTailer) -> None:
    tailer.save_checkpoint(tailer.snapshot())


def ids_for(data: bytes, first_line: bytes, source: str = "ralph") -> list[str]:
    identity = file_identity(first_line.rstrip(b"\r\n"))
    return [derive_event_id(source, identity, o) for o in offsets(data)]


def test_only_complete_lines_are_sent_with_ids_from_identity_and_offset(
    settings: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ralph.jsonl"
    full = line(1) + line(2)
    partial = line(3)
    path.write_bytes(full + partial[:20])
    tailer, producer = make(settings, path)
    drain(tailer)
    assert producer.ids == ids_for(full, line(1))
    assert tailer.position == len(full)
    with path.open("ab") as f:
        f.write(partial[20:])
    drain(tailer)
    assert producer.ids == ids_for(full + partial, line(1))
    assert [e.iteration for e in producer.events] == [1, 2, 3]  # type: ignore[attr-defined]

    # `produce send` of the same file derives exactly the same ids.
    other = FakeProducer()
    with path.open("rb") as f:
        send_lines(
            other,  # type: ignore[arg-type]
            Source.RALPH,
            read_lines(f),
            origin=str(path),
            deterministic_ids=True,
            max_bytes=settings.max_event_bytes,
        )
    assert other.ids == producer.ids


def test_own_event_id_is_kept_crlf_and_blank_lines(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    data = line(1).replace(b"\n", b"\r\n") + b"\n   \n" + line(2, event_id="mine") + line(3)
    path.write_bytes(data)
    tailer, producer = make(settings, path)
    drain(tailer)
    want = ids_for(data, line(1))
    assert producer.ids == [want[0], "mine", want[4]]
    assert tailer.stats.blank == 2
    assert tailer.stats.sent == 3
    assert tailer.snapshot().line_number == 5


def test_invalid_lines_are_dead_lettered_with_line_number_and_raw_text(
    settings: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ralph.jsonl"
    bad_json = b'{"event": "iteration_started", "task_id": '
    bad_schema = json.dumps({"event": "iteration_started", "timestamp": "x"}).encode()
    path.write_bytes(line(1) + bad_json + b"\n\n" + bad_schema + b"\n" + line(2))
    tailer, producer = make(settings, path)
    drain(tailer)
    assert len(producer.events) == 2
    assert [d[0] for d in producer.dead] == [bad_json, bad_schema]
    (_, reason1, f1), (_, reason2, f2) = producer.dead
    assert f1["line_number"] == 2 and f2["line_number"] == 4
    assert f1["file"] == str(path) and f1["stage"] == "tailer" and f1["source"] == "ralph"
    assert f1["error_kind"] == "malformed" and "malformed JSON" in reason1
    assert f"{path} line 2:" in reason1
    assert f2["event_type"] == "iteration_started" and "line 4" in reason2
    assert tailer.stats.invalid == 2


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_oversized_lines_are_dead_lettered_with_a_prefix(
    settings: Any, tmp_path: Path, chunk_bytes: int
) -> None:
    path = tmp_path / "ralph.jsonl"
    huge = b'{"x": "' + b"a" * 100_000 + b'"}\n'
    data = huge + line(1) + huge + line(2)
    path.write_bytes(data)
    tailer, producer = make(settings, path, chunk_bytes=chunk_bytes)
    drain(tailer, rounds=1000)
    assert producer.ids == [ids_for(data, huge)[1], ids_for(data, huge)[3]]
    assert [d[2]["line_number"] for d in producer.dead] == [1, 3]
    assert all(d[2]["error_kind"] == "oversized" for d in producer.dead)
    # The whole line is kept: it is under the one dead-letter cap (schemas.dlq).
    assert len(huge) < DEAD_LETTER_MAX_BYTES
    assert all(huge.startswith(d[0]) and len(d[0]) >= len(huge) - 1 for d in producer.dead)
    assert "event is 100009 bytes, over the limit of 4096 bytes" in producer.dead[0][1]
    assert tailer.position == len(data)
    with path.open("rb") as f:
        assert read_identity(f.fileno()) == file_identity(huge.rstrip(b"\n"))


def test_reads_are_bounded_per_poll(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(b"".join(line(i) for i in range(1, 2501)))
    tailer, producer = make(settings, path)
    assert tailer.poll() is True and len(producer.events) == 1000
    assert tailer.poll() is True and len(producer.events) == 2000
    assert tailer.poll() is False and len(producer.events) == 2500


def test_missing_file_is_waited_for(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "later.jsonl"
    tailer, producer = make(settings, path)
    assert tailer.poll() is False
    path.write_bytes(line(1))
    drain(tailer)
    assert len(producer.events) == 1


def test_truncation_restarts_from_zero(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    first = line(1) + line(2) + line(3)
    path.write_bytes(first)
    tailer, producer = make(settings, path)
    drain(tailer)
    # copytruncate with shorter new content
    with path.open("r+b") as f:
        f.truncate(0)
    second = line(10)
    with path.open("ab") as f:
        f.write(second)
    drain(tailer)
    assert tailer.stats.truncations == 1
    assert producer.ids[3:] == ids_for(second, second)
    # truncated and rewritten past the old position before the tailer looked: the first line
    # changed, so it is a truncation too.
    third = b"".join(line(i) for i in range(20, 26))
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(third)
    drain(tailer)
    assert tailer.stats.truncations == 2
    assert producer.ids[4:] == ids_for(third, third[: third.index(b"\n")])
    assert len(set(producer.ids)) == len(producer.ids) == 10


def test_rotation_finishes_old_file_then_reads_new(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    old = line(1) + line(2)
    path.write_bytes(old)
    tailer, producer = make(settings, path, rotate_grace=0.0)
    drain(tailer)
    path.rename(tmp_path / "ralph.jsonl.1")
    new = line(100) + line(101)
    path.write_bytes(new)
    # the writer had not reopened yet: two more lines to the old file, the last unterminated
    late = line(3) + line(4).rstrip(b"\n")
    with (tmp_path / "ralph.jsonl.1").open("ab") as f:
        f.write(late)
    for _ in range(5):
        tailer.poll()
    old_all = old + late
    assert tailer.stats.rotations == 1
    assert producer.ids == ids_for(old_all, line(1)) + ids_for(new, line(100))
    assert [e.iteration for e in producer.events] == [1, 2, 3, 4, 100, 101]  # type: ignore[attr-defined]


def test_rotation_waits_while_old_file_still_grows(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1))
    tailer, producer = make(settings, path, rotate_grace=60.0)
    drain(tailer)
    path.rename(tmp_path / "old.jsonl")
    path.write_bytes(line(100))
    for _ in range(3):
        tailer.poll()
    assert len(producer.events) == 1  # the new file waits for the grace period
    assert tailer.stats.rotations == 0


def test_resume_from_checkpoint(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1) + line(2))
    tailer, producer = make(settings, path)
    drain(tailer)
    save(tailer)
    tailer.close()
    cp = Checkpoint.from_json(tailer.checkpoint_file.read_bytes())
    assert cp.position == path.stat().st_size and cp.line_number == 2
    assert cp.identity == file_identity(line(1))
    assert [p.name for p in tailer.checkpoint_file.parent.iterdir()] == [
        tailer.checkpoint_file.name
    ]
    with path.open("ab") as f:
        f.write(line(3))
    again, producer2 = make(settings, path)
    drain(again)
    assert [e.iteration for e in producer2.events] == [3]  # type: ignore[attr-defined]
    assert producer2.ids == ids_for(path.read_bytes(), line(1))[2:]
    # --from-start ignores the checkpoint and replays with the same ids
    replay, producer3 = make(settings, path, from_start=True)
    drain(replay)
    assert producer3.ids == producer.ids + producer2.ids


def test_checkpoint_of_another_file_is_not_used(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1) + line(2))
    tailer, _ = make(settings, path)
    drain(tailer)
    save(tailer)
    tailer.close()
    path.unlink()
    path.write_bytes(line(7) + line(8) + line(9))
    again, producer = make(settings, path)
    drain(again)
    assert [e.iteration for e in producer.events] == [7, 8, 9]  # type: ignore[attr-defined]


def test_resume_after_rotation_while_stopped_finishes_rotated_file(
    settings: Any, tmp_path: Path
) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1))
    tailer, _ = make(settings, path)
    drain(tailer)
    save(tailer)
    tailer.close()
    with path.open("ab") as f:
        f.write(line(2))
    path.rename(tmp_path / "ralph.jsonl.1")
    path.write_bytes(line(50))
    again, producer = make(settings, path, rotate_grace=0.0)
    for _ in range(5):
        again.poll()
    assert [e.iteration for e in producer.events] == [2, 50]  # type: ignore[attr-defined]
    old = line(1) + line(2)
    assert producer.ids == ids_for(old, line(1))[1:] + ids_for(line(50), line(50))


def test_unreadable_checkpoint_is_ignored(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1))
    tailer, _ = make(settings, path)
    tailer.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
    tailer.checkpoint_file.write_text("{not json")
    tailer.close()
    again, producer = make(settings, path)
    drain(again)
    assert len(producer.events) == 1


def test_read_identity_needs_a_complete_first_line(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1')
    with path.open("rb") as f:
        assert read_identity(f.fileno()) is None
    path.write_bytes(b'{"a": 1}\r\n{"b": 2}\n')
    with path.open("rb") as f:
        assert read_identity(f.fileno()) == file_identity(b'{"a": 1}')


def test_checkpoint_is_saved_only_after_a_complete_flush(settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "ralph.jsonl"
    path.write_bytes(line(1) + line(2))
    calls: list[tuple[str, bool]] = []

    class Flushing(FakeProducer):
        pending = 2

        def flush(self, timeout: float | None = None) -> int:
            calls.append(("flush", tailer.checkpoint_file.exists()))
            return self.pending

    producer = Flushing()
    tailer, _ = make(settings, path, producer)
    drain(tailer)
    _flush_and_checkpoint([tailer], {Source.RALPH: producer}, 1.0)
    assert calls == [("flush", False)]
    assert not tailer.checkpoint_file.exists() and tailer.dirty  # 2 events not safe yet
    producer.pending = 0
    _flush_and_checkpoint([tailer], {Source.RALPH: producer}, 1.0)
    assert calls[-1] == ("flush", False)
    assert checkpoint_position(tailer) == path.stat().st_size and not tailer.dirty
    _flush_and_checkpoint([tailer], {Source.RALPH: producer}, 1.0)
    assert len(calls) == 2  # nothing new read: no flush


def checkpoint_position(tailer: FileTailer) -> int:
    return Checkpoint.from_json(tailer.checkpoint_file.read_bytes()).position


def test_a_hostile_line_is_dead_lettered_and_the_file_goes_on(
    settings: Any, tmp_path: Path
) -> None:
    """Deep nesting (that crashed the tailer at every restart) and unstorable text each become
    a dead letter with a reason; the lines after them are read, the checkpoint moves past."""
    deep = b'{"event": "iteration_started", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}\n"
    nul = json.dumps({**event("ralph", "iteration_started", iteration=9), "x": "a\x00b"}).encode()
    path = tmp_path / "ralph.jsonl"
    data = line(1) + deep + line(2) + nul + b"\n" + line(3)
    path.write_bytes(data)
    tailer, producer = make(settings, path)
    drain(tailer)
    assert len(producer.events) == 3
    assert [d[2]["line_number"] for d in producer.dead] == [2, 4]
    assert "nests too deeply" in producer.dead[0][1] or "deeper than" in producer.dead[0][1]
    assert "NUL character" in producer.dead[1][1]
    assert tailer.position == len(data)
