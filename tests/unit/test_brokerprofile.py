"""The broker profile: chosen once from the settings; the mock's workarounds only on the mock."""

from __future__ import annotations

from pathlib import Path

from learnstream.brokerprofile import KAFKA, MOCK, profile_for
from learnstream.kafka import consumer_config
from learnstream.settings import Settings, load_settings


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
