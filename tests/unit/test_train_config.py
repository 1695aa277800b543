"""Training settings from the environment."""

from __future__ import annotations

import pytest

from learnstream.core.settings import SettingsError, load_settings


def test_training_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_TRAINING__LORA_RANK", "8")
    monkeypatch.setenv("LEARNSTREAM_TRAINING__VLLM_SERVERS", '["http://vllm:8000/"]')
    monkeypatch.setenv("LEARNSTREAM_TRAINING__BF16", "false")
    monkeypatch.setenv("LEARNSTREAM_TRAINING__MAX_STEPS", "5")
    training = load_settings().training
    assert training.lora_rank == 8
    assert training.vllm_servers == ["http://vllm:8000"]
    assert training.bf16 is False
    assert training.max_steps == 5
    assert training.min_improvement == 0.01
    assert training.device == "auto"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LEARNSTREAM_TRAINING__WEBHOOKS", '["ftp://x"]', "not an http(s) URL"),
        ("LEARNSTREAM_TRAINING__MIN_IMPROVEMENT", "1.5", "less than 1"),
        ("LEARNSTREAM_TRAINING__DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("LEARNSTREAM_TRAINING__NO_SUCH_FIELD", "1", "Extra inputs are not permitted"),
    ],
)
def test_bad_training_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value)
    assert message in str(info.value)
