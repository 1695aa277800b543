"""The demo's run folders: one per run, the last ones kept, running ones never removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from learnstream.cli import cli
from learnstream.core.signals import Terminated
from learnstream.demo import (
    KEEP_RUNS,
    Children,
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


def _child(children: Children, name: str, code: str) -> subprocess.Popen[bytes]:
    """A child running ``code``, as `Children.start` would keep it, whose Popen lock is taken:
    what SIGTERM (`Terminated`) raised right after ``Popen.poll`` took it leaves behind."""
    log = open(children.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    children.procs[name] = (proc, log)
    assert proc._waitpid_lock.acquire(blocking=False)  # type: ignore[attr-defined]
    return proc


def _reap_anyway(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        proc.kill()
        os.waitpid(proc.pid, 0)


def test_stop_ends_a_child_whose_popen_lock_a_signal_left_taken(tmp_path: Path) -> None:
    children = Children({}, tmp_path / "logs")
    proc = _child(children, "worker", "import time; time.sleep(300)")
    try:
        children.stop()  # with Popen.wait: TimeoutExpired after 60 + 10 s, the demo's exit 1
        assert proc.returncode == -signal.SIGTERM
    finally:
        _reap_anyway(proc)


def test_check_sees_a_dead_child_whose_popen_lock_a_signal_left_taken(tmp_path: Path) -> None:
    children = Children({}, tmp_path / "logs")
    proc = _child(children, "sink", "print('sink failed'); raise SystemExit(3)")
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
        with pytest.raises(DemoError, match=r"`learnstream sink` exited with 3; .*sink failed"):
            children.check()
    finally:
        _reap_anyway(proc)
        children.stop()


def _demo_with(run_demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    """`learnstream demo` through the CLI, with ``run_demo`` in place of the real one."""
    monkeypatch.setattr("learnstream.demo.run_demo", run_demo)
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return CliRunner().invoke(cli, ["demo"])
    finally:
        signal.signal(signal.SIGTERM, previous)  # the demo command installed its own


def test_a_cleanup_failing_after_sigterm_still_stops_the_demo_with_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run_demo(*args: object, **kwargs: object) -> None:
        try:
            raise Terminated(143)
        finally:  # a child's stop that failed as the demo stopped
            raise subprocess.TimeoutExpired(["learnstream", "worker"], 10)

    result = _demo_with(run_demo, tmp_path, monkeypatch)
    assert result.exit_code == 143, result.output
    assert result.stderr.splitlines() == [
        "demo stopped; its worker, sink and trainer were stopped with it (TimeoutExpired "
        "while stopping: Command '['learnstream', 'worker']' timed out after 10 seconds)"
    ]


def test_a_demo_error_without_a_signal_is_still_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run_demo(*args: object, **kwargs: object) -> None:
        raise DemoError("nothing was learned")

    result = _demo_with(run_demo, tmp_path, monkeypatch)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["Error: demo: nothing was learned"]
