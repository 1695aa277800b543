"""`learnstream dlq`: count, list and show dead letters, re-publish them after a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream.cli import cli
from learnstream.core.settings import load_settings
from schemas import parse_event
from streams.producers import TelemetryProducer
from tests.integration.conftest import BrokerUnderTest
from tests.integration.kafka_helpers import consume
from tests.unit.events import event

pytestmark = pytest.mark.integration


def test_dead_letters_are_counted_listed_shown_and_republished(
    own_broker: BrokerUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = own_broker.bootstrap_servers
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
    # Events too big for the producer's limit of the day (the "bug"), and one invalid event.
    strict = load_settings(
        data_dir=tmp_path / "sdk", kafka={"bootstrap_servers": bootstrap}, max_event_bytes=300
    )
    big = [event("aidb", "completion", response=f"{n} " + "x" * 400) for n in range(3)]
    with TelemetryProducer("aidb", strict) as producer:
        big_ids = [producer.emit(e) for e in big]
        producer.emit(event("aidb", "completion", success="maybe"))
        assert producer.flush(15) == 0

    runner = CliRunner()
    out = runner.invoke(cli, ["dlq", "count"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(x.split()[:4] == ["3", "aidb", "sdk", "oversized"] for x in lines), out.output
    assert any(x.split()[:4] == ["1", "aidb", "sdk", "invalid"] for x in lines), out.output
    assert lines[-1].split() == ["4", "total"]

    out = runner.invoke(cli, ["dlq", "list", "--kind", "oversized"])
    assert out.exit_code == 0, out.output
    rows = out.output.splitlines()
    assert len(rows) == 3 and all("over the limit of 300 bytes" in r for r in rows)
    position = rows[0].split()[0]

    out = runner.invoke(cli, ["dlq", "show", position])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["position"] == position and json.loads(shown["original"])["event_id"] in big_ids
    assert runner.invoke(cli, ["dlq", "show", "0:999999"]).exit_code == 1

    assert runner.invoke(cli, ["dlq", "republish"]).exit_code == 2  # a selection is needed
    out = runner.invoke(cli, ["dlq", "republish", "--kind", "oversized", "--dry-run"])
    assert out.exit_code == 0 and "3 letters would be re-published" in out.output
    # After the fix (the default limit), the originals go back to their topic.
    out = runner.invoke(cli, ["dlq", "republish", "--kind", "oversized"])
    assert out.exit_code == 0 and "re-published 3 of 3" in out.output, out.output
    got = consume(
        bootstrap,
        ["telemetry.aidb"],
        keep=lambda r: r.headers.get("republished_from") is not None,
        until=lambda kept: len(kept) >= 3,
    )
    assert sorted(r.json()["event_id"] for r in got) == sorted(big_ids)
    # Byte for byte the events that were refused: valid now, over the old limit.
    assert all(len(r.value) > 300 and parse_event("aidb", r.value).event_id for r in got)
