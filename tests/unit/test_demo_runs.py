"""The demo's run folders: one per run, the last ones kept, running ones never removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learnstream.demo import (
    KEEP_RUNS,
    DemoError,
    _demo_line,
    claim_broker,
    point_latest,
    start_run,
)


def test_each_run_gets_a_new_locked_folder_and_old_finished_ones_go(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    old = [base / f"20260101-00000{i}-aaaaaa" for i in range(5)]
    for path in old:
        path.mkdir(parents=True)
    (base / "notes").mkdir()  # not a run folder: left alone
    said: list[str] = []
    first = start_run(tmp_path, said.append)
    try:
        kept = sorted(p.name for p in base.iterdir())
        assert kept == [*(p.name for p in old[-(KEEP_RUNS - 1) :]), first.run_id, "notes"]
        assert said == [f"removed 3 older demo run(s) from {base} (the last 3 are kept)"]
        # A second run at once keeps the first (it is running) and gets its own folder.
        second = start_run(tmp_path, said.append)
        assert first.dir.exists() and second.dir != first.dir
        assert point_latest(second).resolve() == second.dir.resolve()
        second.close()
    finally:
        first.close()


def test_a_second_run_on_the_same_configured_broker_is_refused(tmp_path: Path) -> None:
    first = start_run(tmp_path, print)
    second = start_run(tmp_path, print)
    try:
        claim_broker(first, "kafka:9092")
        with pytest.raises(DemoError, match=r"another demo .* runs on the configured broker"):
            claim_broker(second, "kafka:9092")
        claim_broker(second, "other:9092")  # another broker: no conflict
    finally:
        first.close()
        second.close()
    third = start_run(tmp_path, print)
    try:
        claim_broker(third, "kafka:9092")  # the first one ended
    finally:
        third.close()


def test_event_ids_derive_from_the_run() -> None:
    line = b'{"event_type":"query","query":"q"}\n'
    a = json.loads(_demo_line(line, "run-a", "aidb", 0))["event_id"]
    assert a == json.loads(_demo_line(line, "run-a", "aidb", 0))["event_id"]
    assert a != json.loads(_demo_line(line, "run-b", "aidb", 0))["event_id"]
    assert a != json.loads(_demo_line(line, "run-a", "aidb", 10))["event_id"]
    given = b'{"event_type":"query","event_id":"kept"}\n'
    assert _demo_line(given, "run-a", "aidb", 0) == given
    assert _demo_line(b"not json\n", "run-a", "aidb", 0) == b"not json\n"
