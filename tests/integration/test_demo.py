"""The README's main job: `learnstream demo` on embedded defaults."""

from __future__ import annotations

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


def test_demo_publishes_the_examples_and_reads_them_back(tmp_path: Path) -> None:
    env = {"LEARNSTREAM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {
        line.split()[0]: line.split()[1:4]
        for line in out.stdout.splitlines()
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
