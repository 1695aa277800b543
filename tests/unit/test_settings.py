"""Settings from LEARNSTREAM_* variables; bad ones fail at start naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream.cli import cli
from learnstream.core.settings import SettingsError, load_settings


def test_documented_variable_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LEARNSTREAM_POSTGRES__URL", "postgresql://u:pw@db/ls")
    monkeypatch.setenv("LEARNSTREAM_QDRANT__URL", "http://qdrant:6333")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.data_dir == tmp_path / "d"
    assert s.postgres.url is not None
    assert s.postgres.url.get_secret_value() == "postgresql://u:pw@db/ls"
    assert s.qdrant.url == "http://qdrant:6333"


def test_local_state_lives_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    s = load_settings()
    for path in (
        s.broker_file,
        s.spool_dir,
        s.postgres_dir,
        s.qdrant_path,
        s.dataset_path,
        s.adapters_dir,
    ):
        assert path.is_relative_to(tmp_path)
    monkeypatch.setenv("LEARNSTREAM_QDRANT__PATH", "/srv/qdrant")
    assert load_settings().qdrant_path == Path("/srv/qdrant")


def test_the_adapter_folder_follows_its_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    assert load_settings().adapters_dir == tmp_path / "adapters"
    monkeypatch.setenv("LEARNSTREAM_TRAINING__REGISTRY_DIR", "/srv/adapters")
    assert load_settings().adapters_dir == Path("/srv/adapters")
    monkeypatch.setenv("LEARNSTREAM_TRAINING__REGISTRY_DIR", "~/adapters")
    assert load_settings().adapters_dir == Path.home() / "adapters"


def test_score_and_trigger_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_SCORE__THRESHOLD", "0.65")
    monkeypatch.setenv("LEARNSTREAM_SCORE__WEIGHTS__OUTCOME", "0.3")
    monkeypatch.setenv("LEARNSTREAM_SCORE__WEIGHTS__NOVELTY", "0.2")
    monkeypatch.setenv("LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD", "25")
    s = load_settings()
    assert s.score.threshold == 0.65
    assert (s.score.weights.outcome, s.score.weights.novelty) == (0.3, 0.2)
    assert s.triggers.learnings_threshold == 25
    assert s.triggers.max_days_between == 7.0


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("LEARNSTREAM_SCORE__THRESHOLD", "1.5", "less than or equal to 1"),
        ("LEARNSTREAM_SCORE__THRESHOLD", "high", "valid number"),
        ("LEARNSTREAM_SCORE__WEIGHTS__OUTCOME", "0.9", "must sum to 1, they sum to 1.5"),
        ("LEARNSTREAM_SCORE__WEIGHTS__FEEDBACK", "-0.1", "greater than or equal to 0"),
        ("LEARNSTREAM_KAFKA__SECURITY_PROTOCOL", "TLS", "'PLAINTEXT', 'SSL'"),
        ("LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD", "0", "greater than or equal to 1"),
        ("LEARNSTREAM_GATEWAY__PORT", "99999", "less than or equal to 65535"),
        ("LEARNSTREAM_MAX_EVENT_BYTES", "ten", "valid integer"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    expected_var = env.rsplit("__", 1)[0] if "WEIGHTS__" in env and "sum" in message else env
    assert expected_var in text
    assert message in text


def test_cli_fails_at_start_on_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_SCORE__THRESHOLD", "7")
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 1
    assert "invalid settings" in result.output
    assert "LEARNSTREAM_SCORE__THRESHOLD" in result.output


def test_security_options_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from learnstream.core.kafka import client_config

    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SASL_USERNAME", "ls")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("LEARNSTREAM_KAFKA__EXTRA", '{"socket.keepalive.enable": "true"}')
    conf = client_config(load_settings(), **{"acks": "all"})
    assert conf == {
        "bootstrap.servers": "broker:9093",
        "client.id": "learnstream",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ls",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "socket.keepalive.enable": "true",
        "acks": "all",
    }


def test_config_command_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("LEARNSTREAM_POSTGRES__URL", "postgresql://u:pw@db/x")
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert "pw@db" not in result.output
    assert '"sasl_password": "**********"' in result.output


def test_no_broker_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["topics", "list"])
    assert result.exit_code == 1
    assert "no Kafka broker: set LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS" in result.output
    assert "learnstream broker" in result.output
