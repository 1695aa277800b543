"""The broker profile: chosen once from the settings; the mock's workarounds only on the mock."""

from __future__ import annotations

from pathlib import Path

import pytest

from learnstream.core.brokerprofile import KAFKA, MOCK, profile_for
from learnstream.core.kafka import client_config, consumer_config
from learnstream.core.settings import Settings, SettingsError, load_settings


def _settings(tmp_path: Path, dev: bool) -> Settings:
    return load_settings(
        data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:1", "dev_broker": dev}
    )


def test_the_profile_follows_the_settings(tmp_path: Path) -> None:
    assert profile_for(_settings(tmp_path, True)) is MOCK
    assert profile_for(_settings(tmp_path, False)) is KAFKA


def test_mock_group_timings_only_on_the_mock(tmp_path: Path) -> None:
    mock = consumer_config(_settings(tmp_path, True), "g")
    real = consumer_config(_settings(tmp_path, False), "g")
    assert mock["session.timeout.ms"] == 6000
    assert "session.timeout.ms" not in real and "heartbeat.interval.ms" not in real


def test_a_real_broker_needs_none_of_the_mock_workarounds() -> None:
    assert KAFKA.creates_topics and KAFKA.describes_groups and KAFKA.timestamp_index
    assert not KAFKA.commit_by_joining and not KAFKA.consumer_overrides
    assert not MOCK.creates_topics and MOCK.commit_by_joining and not MOCK.timestamp_index


def test_consumer_properties_from_the_settings_override_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNSTREAM_KAFKA__CONSUMER_EXTRA", '{"session.timeout.ms": "10000"}')
    for dev in (True, False):
        conf = consumer_config(_settings(tmp_path, dev), "g")
        assert conf["session.timeout.ms"] == "10000"
    producer_side = client_config(_settings(tmp_path, False))
    assert "session.timeout.ms" not in producer_side  # consumers only


def test_the_worker_session_timeout_is_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.app import group_timings

    assert group_timings(_settings(tmp_path, False)) == (60.0, 3.0)
    assert group_timings(_settings(tmp_path, True)) == (8.0, 1.0)
    monkeypatch.setenv("LEARNSTREAM_WORKER__SESSION_TIMEOUT_S", "10")
    session, heartbeat = group_timings(_settings(tmp_path, False))
    assert session == 10 and heartbeat <= 10 / 3
    monkeypatch.setenv("LEARNSTREAM_WORKER__SESSION_TIMEOUT_S", "2")
    with pytest.raises(SettingsError, match="SESSION_TIMEOUT_S"):
        _settings(tmp_path, False)
