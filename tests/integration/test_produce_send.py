"""`learnstream produce send`: counts, dead letters, deterministic ids, exit codes."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream.cli import cli
from streams.producers.ids import derive_event_id, file_identity
from tests.integration.kafka_helpers import consume
from tests.unit.events import event

pytestmark = pytest.mark.integration


def _write(path: Path, unique: str) -> list[bytes]:
    lines = [
        json.dumps(
            event("hybrid", "route_decided", conversation_id=f"c-{unique}", query=f"q{i} {unique}")
        ).encode()
        for i in range(5)
    ]
    lines.insert(
        2, b'{"event": "route_decided", "query": "no route", "timestamp": "2026-11-02T09:14:05Z"}'
    )
    lines.insert(4, b"")
    lines.insert(5, b"{not json")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def test_send_file_reports_counts_and_dead_letters_bad_lines(
    kafka_env: str, tmp_path: Path, unique: str
) -> None:
    path = tmp_path / "hybrid-events.jsonl"
    lines = _write(path, unique)
    result = CliRunner().invoke(cli, ["produce", "send", "--source", "hybrid", str(path)])
    assert result.exit_code == 0, result.output
    assert "hybrid: sent 5, invalid 2 (to telemetry.dlq); route_decided 5" in result.stdout
    # One line per invalid event on stderr: source, file and line, the reason.
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 2, result.stderr
    assert problems[0].startswith(f"hybrid: {path} line 3: ") and "field 'route'" in problems[0]
    assert problems[1].startswith(f"hybrid: {path} line 6: malformed JSON"), problems[1]

    identity = file_identity(lines[0])
    offsets, offset = [], 0
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    expected_ids = {derive_event_id("hybrid", identity, offsets[i]) for i in (0, 1, 3, 6, 7)}
    got = consume(
        kafka_env,
        ["telemetry.hybrid"],
        keep=lambda r: r.key == f"c-{unique}".encode(),
        until=lambda kept: len(kept) >= 5,
        settle=1.0,
    )
    assert {r.json()["event_id"] for r in got} == expected_ids

    dead = consume(
        kafka_env,
        ["telemetry.dlq"],
        keep=lambda r: r.json().get("file") == str(path),
        until=lambda kept: len(kept) >= 2,
        settle=1.0,
    )
    by_line = {r.json()["line_number"]: r.json() for r in dead}
    assert set(by_line) == {3, 6}
    assert "field 'route': Field required" in by_line[3]["error"]
    assert by_line[3]["error"].startswith(f"{path} line 3: ")
    assert base64.b64decode(by_line[6]["original_b64"]) == b"{not json"
    assert by_line[6]["error_kind"] == "malformed" and by_line[6]["stage"] == "send"

    # Sending the same file again gives the same ids, so downstream upserts do not duplicate.
    again = CliRunner().invoke(cli, ["produce", "send", "--source", "hybrid", str(path)])
    assert again.exit_code == 0
    twice = consume(
        kafka_env,
        ["telemetry.hybrid"],
        keep=lambda r: r.key == f"c-{unique}".encode(),
        until=lambda kept: len(kept) >= 10,
        settle=1.0,
    )
    assert {r.json()["event_id"] for r in twice} == expected_ids


def test_send_from_stdin(kafka_env: str, unique: str) -> None:
    data = "\n".join(
        json.dumps(event("vscode", "session_started", session_id=f"v-{unique}")) for _ in range(3)
    )
    result = CliRunner().invoke(cli, ["produce", "send", "--source", "vscode", "-"], input=data)
    assert result.exit_code == 0, result.output
    assert "vscode: sent 3, invalid 0" in result.output
    got = consume(
        kafka_env,
        ["telemetry.vscode"],
        keep=lambda r: r.key == f"v-{unique}".encode(),
        until=lambda kept: len(kept) >= 3,
        settle=0.5,
    )
    assert len({r.json()["event_id"] for r in got}) == 3


def test_send_exits_nonzero_when_nothing_could_be_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("LEARNSTREAM_PRODUCER__DELIVERY_TIMEOUT_MS", "1000")
    path = tmp_path / "aidb.jsonl"
    path.write_text(json.dumps(event("aidb", "query")) + "\n")
    monkeypatch.delenv("LEARNSTREAM_PRODUCER__DELIVERY_TIMEOUT_MS")  # the default 30 s
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["produce", "send", "--source", "aidb", "--timeout", "2", str(path)]
    )
    assert time.monotonic() - started < 2 + 5  # --timeout bounds it, not the 30 s delivery
    assert result.exit_code == 1
    assert "aidb: sent 1, invalid 0" in result.stdout
    assert "1 events not delivered yet; kept in the spool" in result.stderr
