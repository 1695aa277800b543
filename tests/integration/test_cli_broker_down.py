"""With the broker down, every CLI command answers in one line within its timeout.

Every command of the click tree is classified below: run against a dead address (a free
loopback port nobody listens on), a long-running service (its shutdown is tested elsewhere),
or one that talks to no broker. A new command fails `test_every_command_is_classified` until
it is given a place here. No broker is started: the address is dead on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from learnstream.cli import cli
from learnstream.core.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT = "2"
BOUND_S = 60  # a command that hangs (retries for ever) fails here, whatever the load

# command path -> arguments after it ({events} is a JSONL file with one valid event)
AGAINST_DEAD_BROKER: dict[str, list[str]] = {
    "topics create": ["--timeout", TIMEOUT],
    "topics list": ["--timeout", TIMEOUT],
    "topics describe": ["--timeout", TIMEOUT],
    "produce send": ["--source", "ralph", "--timeout", TIMEOUT, "{events}"],
    "backfill": ["--source", "ralph", "--timeout", TIMEOUT, "{events}"],
    "replay": ["--group", "g", "--topic", "telemetry.ralph", "--to-start", "--timeout", TIMEOUT],
    "dlq count": ["--timeout", TIMEOUT],
    "dlq list": ["--timeout", TIMEOUT],
    "dlq show": ["0:0", "--timeout", TIMEOUT],
    "dlq republish": ["--source", "ralph", "--timeout", TIMEOUT],
    # the worker's HTTP API, with no worker on the (dead) web port
    "status": [],
    "trigger": [],
}
# Spooling is the right answer for these: the events wait on disk for the next run.
SPOOLS = {"produce send", "backfill"}

LONG_RUNNING = {
    "broker",  # serves a broker itself
    "kafka",
    "demo",  # starts its own broker
    "produce tail",  # follow files until stopped; spools while the broker is away
    "gateway",
    "worker",
    "sink",
    "trainer",
}
NO_BROKER = {
    "topics rpk-script",
    "patterns search",  # the worker's web port, else the Qdrant folder
    "patterns top",
    "dataset stats",
    "dataset validate",
    "schemas export",
    "config",
    "adapters list",
    "adapters show",
    "adapters activate",
    "adapters rollback",
    "db",  # PostgreSQL: the embedded one or LEARNSTREAM_POSTGRES__URL
}


def _leaves(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _leaves(command, path + " ")
        else:
            yield path


def test_every_command_is_classified() -> None:
    leaves = set(_leaves(cli))
    classified = set(AGAINST_DEAD_BROKER) | LONG_RUNNING | NO_BROKER
    assert leaves - classified == set(), "classify the new commands in this file"
    assert classified - leaves == set(), "these commands are gone"


@pytest.fixture(scope="module")
def dead_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    data = tmp_path_factory.mktemp("broker-down")
    port = free_port()  # nobody listens here
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(
        LEARNSTREAM_DATA_DIR=str(data),
        LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        LEARNSTREAM_WORKER__WEB_PORT=str(port),
    )
    events = data / "ralph-events.jsonl"
    events.write_text(
        '{"event": "task_completed", "task_id": "t1", "prompt": "p", "output": "o", '
        '"exit_code": 0, "timestamp": "2021-03-01T00:00:00+00:00"}\n'
    )
    return env, events


@pytest.mark.parametrize("command", sorted(AGAINST_DEAD_BROKER))
def test_command_against_a_dead_broker_answers_in_one_line(
    command: str, dead_env: tuple[dict[str, str], Path]
) -> None:
    env, events = dead_env
    args = [a.replace("{events}", str(events)) for a in AGAINST_DEAD_BROKER[command]]
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", *command.split(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1, out.stderr
    assert out.returncode == 1, (out.returncode, out.stderr)
    port = env["LEARNSTREAM_WORKER__WEB_PORT"]
    if command in SPOOLS:
        assert "kept in the spool" in lines[0], lines[0]
        assert "sent 1" in out.stdout, out.stdout
    else:
        assert f"127.0.0.1:{port}" in lines[0], lines[0]  # names the address it tried
