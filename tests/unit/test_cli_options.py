"""Every CLI option can be set from the environment; `config` shows what commands use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.core import ParameterSource
from click.testing import CliRunner

from learnstream.cli import cli, mask_url_password
from learnstream.devbroker import write_record


def commands() -> Iterator[tuple[click.Command, click.Context]]:
    """Every command of the tree with the context click gives it (root prefix LEARNSTREAM)."""

    def walk(
        command: click.Command, ctx: click.Context
    ) -> Iterator[tuple[click.Command, click.Context]]:
        yield command, ctx
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    root = click.Context(cli, info_name="learnstream", **(cli.context_settings or {}))
    yield from walk(cli, root)


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.expose_value]


def env_name(option: click.Option, ctx: click.Context) -> str:
    if option.envvar:
        assert isinstance(option.envvar, str)
        return option.envvar
    assert ctx.auto_envvar_prefix, ctx.command_path
    assert option.name
    return f"{ctx.auto_envvar_prefix}_{option.name.upper()}"


def test_every_option_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = 0
    for command, ctx in commands():
        for option in options(command):
            name = env_name(option, ctx)
            assert name.startswith("LEARNSTREAM_") or name == "KAFKA_HOME", (ctx.command_path, name)
            monkeypatch.setenv(name, "sentinel-value")
            # What click itself reads for the option, and where it says the value came from.
            assert option.resolve_envvar_value(ctx) == "sentinel-value", (ctx.command_path, name)
            monkeypatch.delenv(name)
            seen += 1
    assert seen >= 40


def test_every_option_shows_its_variable_in_help() -> None:
    for command, ctx in commands():
        if not options(command):
            continue
        help_text = " ".join(command.get_help(ctx).split())
        for option in options(command):
            assert option.show_envvar, (ctx.command_path, option.name)
            assert env_name(option, ctx) in help_text.replace("- ", "-"), (
                ctx.command_path,
                option.name,
            )


def test_an_option_from_the_environment_reaches_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `produce send --timeout` from LEARNSTREAM_PRODUCE_SEND_TIMEOUT: a bad value is refused
    # naming the variable's option, so click really parsed it from there.
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path), "produce", "send", "--source", "ralph", "-"],
        env={"LEARNSTREAM_PRODUCE_SEND_TIMEOUT": "soon"},
        input="",
    )
    assert result.exit_code == 2
    assert "--timeout" in result.output and "soon" in result.output
    sub = cli.commands["broker"]
    ctx = click.Context(sub, info_name="broker", auto_envvar_prefix="LEARNSTREAM_BROKER")
    (port,) = [o for o in options(sub) if o.name == "port"]
    monkeypatch.setenv("LEARNSTREAM_BROKER_PORT", "19093")
    value, source = port.consume_value(ctx, {})
    assert (value, source) == ("19093", ParameterSource.ENVIRONMENT)


# --- learnstream config --------------------------------------------------------------------


def _config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    full.update({"LEARNSTREAM_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "learnstream", "config"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_masks_only_the_postgres_password(tmp_path: Path) -> None:
    url = "postgresql://learnstream:hunter2@db.internal:6543/telemetry?sslmode=require"
    out = _config(tmp_path, LEARNSTREAM_POSTGRES__URL=url, LEARNSTREAM_GATEWAY__TOKEN="tok3n")
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "tok3n" not in out.stdout
    shown = json.loads(out.stdout)
    assert shown["postgres"]["url"] == (
        "postgresql://learnstream:**********@db.internal:6543/telemetry?sslmode=require"
    )
    assert shown["gateway"]["token"] == "**********"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p%40ss@h/db", "postgresql://u:**********@h/db"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql:///db?host=/run/pg&password=s3", "postgresql:///db?host=/run/pg&password=**********"),
        ("postgresql://u:a:b@h/db?user=u&password=x&sslmode=verify-full",
         "postgresql://u:**********@h/db?user=u&password=**********&sslmode=verify-full"),
    ],
)  # fmt: skip
def test_mask_url_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


def test_config_shows_the_running_dev_brokers_address(tmp_path: Path) -> None:
    import socket

    # A listening socket stands for the broker: `config` reads the record and checks it answers.
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        write_record(tmp_path / "broker.json", address, 1)
        out = _config(tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kafka"]["bootstrap_servers"] == address
    assert "broker.json" in out.stderr
    # Configured servers win, and nothing is said about the record.
    out = _config(tmp_path, LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS="kafka-1:9092")
    assert json.loads(out.stdout)["kafka"]["bootstrap_servers"] == "kafka-1:9092"
    assert "broker.json" not in out.stderr
