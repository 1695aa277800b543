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


FULL_DISK_SCRIPT = """
import json, sys
from pathlib import Path
from streams.producers.spool import Spool, SpoolRecord

spool = Spool(Path(sys.argv[1]), 1 << 20)
accepted = 0
for i in range(100):
    r = SpoolRecord("telemetry.ralph", b"x" * 300, b"k", [], f"e{i}", i, "ralph")
    if not spool.append(r):
        break
    accepted += 1
size = (Path(sys.argv[1]) / "spool.log").stat().st_size
refused = {"error": spool.last_error, "disk": spool.disk_refused, "end": spool.unsent_bytes}
refused["size"] = size
entries = spool.peek(1000)
spool.advance(entries[-1][0], len(entries))  # everything sent: the file is reset
again = spool.append(SpoolRecord("telemetry.ralph", b"y", b"k", [], "after", 1000, "ralph"))
spool.close()
print(json.dumps({"accepted": accepted, "again": again, **refused}))
"""


def test_a_disk_that_refuses_a_write_leaves_no_torn_record(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    # `ulimit -f 4`: no file of the process may grow past 4 KiB (EFBIG, as on a full disk).
    script = 'ulimit -f 4; trap "" XFSZ; exec "$@"'
    out = subprocess.run(
        ["bash", "-c", script, "spool", sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert 0 < result["accepted"] < 100
    assert result["disk"] is True and "the disk refused the spool's write" in result["error"]
    assert result["end"] == result["size"]  # the refused record left no torn line
    assert result["size"] <= 4096
    assert result["again"] is True  # room again once the sent records are dropped
    spool = Spool(tmp_path, 1 << 20)
    assert [r.event_id for _, r in spool.peek(10)] == ["after"]
    spool.close()


def test_the_cap_is_not_a_disk_refusal(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024)
    while spool.append(rec(0)):
        pass
    assert not spool.disk_refused and "cap of 1024 bytes" in (spool.last_error or "")
    spool.close()
