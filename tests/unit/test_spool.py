"""The on-disk spool: order, bounds, crash safety, exclusive use."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.producers.spool import Spool, SpoolLockedError, SpoolRecord


def rec(i: int) -> SpoolRecord:
    return SpoolRecord(
        topic="telemetry.ralph",
        value=f'{{"n": {i}}}'.encode(),
        key=b"k",
        headers=[("source", b"ralph")],
        event_id=f"e{i}",
        seq=i,
        source="ralph",
    )


def test_fifo_across_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    for i in range(10):
        assert spool.append(rec(i))
    spool.close()
    spool = Spool(tmp_path, 1 << 20)
    assert len(spool) == 10
    entries = spool.peek(4)
    assert [r.event_id for _, r in entries] == ["e0", "e1", "e2", "e3"]
    assert entries[0][1].value == b'{"n": 0}' and entries[0][1].headers == [("source", b"ralph")]
    spool.advance(entries[-1][0], 4)
    spool.close()
    spool = Spool(tmp_path, 1 << 20)  # the read position survives a restart
    assert [r.event_id for _, r in spool.peek(100)] == [f"e{i}" for i in range(4, 10)]
    last = spool.peek(100)[-1][0]
    spool.advance(last, 6)
    assert len(spool) == 0 and spool.unsent_bytes == 0
    assert (tmp_path / "spool.log").stat().st_size == 0  # reset once drained
    spool.close()


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(rec(1))
    spool.append(rec(2))
    spool.close()
    with open(tmp_path / "spool.log", "ab") as f:
        f.write(rec(3).encode()[:25])  # crash mid-append
    spool = Spool(tmp_path, 1 << 20)
    assert [r.event_id for _, r in spool.peek(10)] == ["e1", "e2"]
    spool.append(rec(4))
    assert [r.event_id for _, r in spool.peek(10)] == ["e1", "e2", "e4"]
    spool.close()


def test_bounded_by_unsent_bytes(tmp_path: Path) -> None:
    size = len(rec(0).encode())
    spool = Spool(tmp_path, size * 3)
    assert [spool.append(rec(i)) for i in range(5)] == [True, True, True, False, False]
    spool.advance(spool.peek(1)[0][0], 1)
    assert spool.append(rec(9))  # room again once something was sent
    spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20)
    with pytest.raises(SpoolLockedError, match="in use by another process"):
        Spool(tmp_path, 1 << 20)
    first.close()
    Spool(tmp_path, 1 << 20).close()
