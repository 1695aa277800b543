"""The README's main job: `learnstream demo` on embedded defaults."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import Source, parse_event
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration


def test_example_files_are_valid_and_cover_every_source() -> None:
    for source in Source:
        lines = (EXAMPLES / f"{source.value}-events.jsonl").read_bytes().splitlines()
        types = {parse_event(source, line).event_type for line in lines if line.strip()}
        assert len(lines) >= 20
        assert len(types) >= 5


@pytest.mark.slow
def test_demo_runs_the_whole_loop_on_embedded_defaults(tmp_path: Path) -> None:
    # A user's environment (their PATH, whatever it holds) with a HOME and data dir that no
    # earlier run has touched.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update({"LEARNSTREAM_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)})
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {
        line.split()[0]: line.split()[1:4]
        for line in out.stdout.split("value scores")[0].splitlines()
        if line.split() and line.split()[0] in {s.value for s in Source}
    }
    for source in Source:
        n = sum(
            1
            for line in (EXAMPLES / f"{source.value}-events.jsonl").read_bytes().splitlines()
            if line.strip()
        )
        assert rows[source.value] == [str(n), str(n), "0"], out.stdout
    assert (tmp_path / "schemas" / "index.json").exists()
    assert not (tmp_path / "broker.json").exists()  # the in-process broker stopped cleanly
    text = out.stdout
    # Scored, stored in PostgreSQL, extracted into patterns and dataset, trained once.
    pg = {
        line.split()[0]: int(line.split()[1])
        for line in text.split("PostgreSQL telemetry_events")[1].splitlines()[1:5]
    }
    assert sum(pg.values()) == sum(int(rows[s.value][0]) for s in Source), text
    learned = re.search(
        r"patterns learned: (\d+) new, (\d+) merged; dataset .*: (\d+) examples", text
    )
    assert learned and int(learned[1]) > 0 and int(learned[3]) > 0, text
    # The sample's chit-chat (vscode session vs-3d91a5) scores high but teaches nothing.
    gate = re.search(r"substance gate: (\d+) of (\d+) candidates refused \(([^)]*)\)", text)
    assert gate and int(gate[1]) >= 3 and int(gate[2]) > int(gate[1]), text
    assert {"repetition", "acknowledgement"} & set(re.findall(r"[a-z_]+", gate[3])), gate[3]
    assert re.search(r"training trigger \w+: learnings", text), text
    result = re.search(r"training result: (PROMOTED|REJECTED): ", text)
    assert result, text
    manifest = json.loads(next((tmp_path / "adapters").glob("*/manifest.json")).read_text())
    assert (manifest.get("active") is not None) == (result[1] == "PROMOTED"), manifest
    lines = (tmp_path / "dataset" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == int(learned[3]) and all(json.loads(line)["messages"] for line in lines)


@pytest.mark.slow
def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    import signal
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update({"LEARNSTREAM_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)})
    demo = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("published "):  # the children are up and working
                break
        assert seen and seen[-1].startswith("published "), "".join(seen)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3
        pid_file = tmp_path / "postgres" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(120) == 143
        _, gone_alive = psutil.wait_procs(children, timeout=30)
        assert gone_alive == [], [p.cmdline() for p in gone_alive]
        if postmaster is not None:
            deadline = time.monotonic() + 30
            while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not psutil.pid_exists(postmaster), "the embedded PostgreSQL kept running"
        assert "demo stopped" in (demo.stderr.read() if demo.stderr else "")
    finally:
        if demo.poll() is None:
            demo.kill()
