"""The command line: fast --help (no heavy imports) and schema export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream.cli import cli
from schemas import EVENT_MODELS, parse_event
from tests.unit.events import event

HEAVY = (
    "torch",
    "transformers",
    "faust",
    "qdrant_client",
    "sentence_transformers",
    "confluent_kafka",
    "psycopg",
    "pydantic",
)


def test_help_lists_commands_without_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from learnstream.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='learnstream')\nexcept SystemExit as e:\n"
        "    assert e.code == 0\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout
    for command in ("broker", "topics", "schemas", "config", "demo"):
        assert f"  {command} " in out.stdout


def test_broker_help_states_its_limits() -> None:
    result = CliRunner().invoke(cli, ["broker", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "in memory only" in text
    assert "no CreateTopics" in text


def test_schemas_export_writes_every_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schemas", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").rglob("*.schema.json"))
    n_events = sum(len(m) for m in EVENT_MODELS.values())
    assert len(files) == n_events + 8
    assert f"wrote {len(files)} schemas" in result.output
    schema = json.loads((tmp_path / "out/events/ralph/task_completed.schema.json").read_text())
    assert {"task_id", "prompt", "timestamp", "event_type"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"task_id", "prompt", "timestamp", "event_type"}
    assert schema["additionalProperties"] is True
    for name in (
        "ScoredInteraction",
        "Pattern",
        "DatasetExample",
        "TrainingTrigger",
        "TrainingResult",
        "DeadLetter",
        "Interaction",
    ):
        exported = json.loads((tmp_path / f"out/{name}.schema.json").read_text())
        assert "schema_version" in json.dumps(exported)
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert index["events"]["ralph"][0] == "checkpoint_saved"


def test_exported_schema_agrees_with_the_model(tmp_path: Path) -> None:
    """Properties the JSON Schema requires are exactly the fields the model rejects missing."""
    CliRunner().invoke(cli, ["schemas", "export", str(tmp_path)])
    schema = json.loads((tmp_path / "events/aidb/error.schema.json").read_text())
    data = event("aidb", "error")
    for field in schema["required"]:
        if field == "event_type":
            continue
        broken = {k: v for k, v in data.items() if k != field}
        try:
            parse_event("aidb", broken)
        except ValueError as exc:
            assert field in str(exc)
        else:
            raise AssertionError(f"{field} is required by the schema but not by the model")


@pytest.mark.parametrize(
    "args", [["topics", "list"], ["topics", "describe", "telemetry.aidb"], ["topics", "create"]]
)
def test_a_dead_broker_is_one_line_within_the_timeout(args: list[str], tmp_path: Path) -> None:
    """No librdkafka FAIL lines, no traceback: one line naming the address and the setting."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(
        LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", LEARNSTREAM_DATA_DIR=str(tmp_path)
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", *args, "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "127.0.0.1:1" in lines[0] and "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS" in lines[0]
    assert took < 1 + 8, took  # bounded by --timeout (plus interpreter start), not 10 s or 20


def _without(module: str, tmp_path: Path, *args: str) -> list[str]:
    """stderr lines of ``learnstream ARGS`` with ``module`` unimportable (as if not installed)."""
    import os

    shadow = tmp_path / "shadow"
    shadow.mkdir()
    # A module that cannot be imported, first on the path.
    (shadow / f"{module}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    env["LEARNSTREAM_DATA_DIR"] = str(tmp_path / "data")
    env["LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    return out.stderr.strip().splitlines()


def test_a_missing_extra_is_named_not_a_traceback(tmp_path: Path) -> None:
    """`learnstream worker` on a base install (faust hidden here) names the extra to install."""
    lines = _without("faust", tmp_path, "worker")
    assert len(lines) == 1, lines
    assert "'faust'" in lines[0] and 'pip install "learnstream[stream]"' in lines[0]


def test_every_source_option_offers_exactly_the_sources() -> None:
    from learnstream.cli_support import SOURCES
    from learnstream.replay_commands import backfill
    from schemas.base import Source

    assert list(SOURCES.choices) == [s.value for s in Source]
    produce = cli.commands["produce"]
    commands = [produce.commands["send"], produce.commands["tail"], backfill]  # type: ignore[attr-defined]
    for command in commands:
        (option,) = [p for p in command.params if p.name in ("source", "sources")]
        assert option.type is SOURCES, command.name


def test_sigterm_while_a_worker_starts_is_a_clean_exit(tmp_path: Path) -> None:
    """SIGTERM during the worker's seconds of imports ends it with 143, not killed by the signal."""
    import os
    import signal
    import time

    env = {
        **os.environ,
        "LEARNSTREAM_DATA_DIR": str(tmp_path),
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens there
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # the CLI is loaded; Faust, torch and the model are still importing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 143), (proc.returncode, err[-2000:])
    assert "Traceback" not in err


def test_the_gateway_names_its_extra_when_uvicorn_is_missing(tmp_path: Path) -> None:
    """`learnstream gateway` without the gateway extra (uvicorn hidden) names the extra."""
    lines = _without("uvicorn", tmp_path, "gateway", "--port", "0")
    assert len(lines) == 1, lines
    assert "'uvicorn'" in lines[0] and 'pip install "learnstream[gateway]"' in lines[0]


def test_a_quiet_command_gives_the_sdk_its_log_level_back() -> None:
    """`produce send` run in-process (CliRunner, a tool's own code) must not silence the SDK."""
    import logging

    from learnstream.cli_support import quiet_producer_log
    from learnstream.core.settings import load_settings

    logger = logging.getLogger("learnstream.producer")
    before = logger.level
    with quiet_producer_log(load_settings()):
        assert logger.level == logging.ERROR
    assert logger.level == before


def test_the_cli_runs_in_a_thread_other_than_the_main_one() -> None:
    """A tool calling the CLI from a worker thread: no signal set-up there (it would raise)."""
    import threading

    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(cli, ["config", "--help"]).exit_code)
    )
    thread.start()
    thread.join(30)
    assert results == [0]
