"""LEARNSTREAM_EXTRACT__* settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from extractors.stage import dataset_path
from learnstream.core.settings import SettingsError, load_settings


def test_defaults_are_heuristic_only() -> None:
    s = load_settings().extract
    assert s.llm_base_url is None and s.llm_api_key is None
    assert (s.temperature, s.concurrency, s.merge_threshold) == (0.1, 4, 0.95)
    assert s.dataset_path is None


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__LLM_BASE_URL", "http://127.0.0.1:8080/v1/")
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__LLM_MODEL", "qwen2.5-coder")
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__LLM_API_KEY", "sk-local")
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__CONCURRENCY", "8")
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__BREAKER_RESET_S", "5")
    monkeypatch.setenv("LEARNSTREAM_EXTRACT__DATASET_PATH", str(tmp_path / "ds.jsonl"))
    s = load_settings()
    e = s.extract
    assert e.llm_base_url == "http://127.0.0.1:8080/v1"
    assert e.llm_model == "qwen2.5-coder"
    assert e.llm_api_key is not None and e.llm_api_key.get_secret_value() == "sk-local"
    assert "sk-local" not in repr(e)
    assert (e.concurrency, e.breaker_reset_s) == (8, 5.0)
    assert dataset_path(s) == tmp_path / "ds.jsonl"


def test_dataset_path_defaults_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LEARNSTREAM_EXTRACT__DATASET_PATH", raising=False)
    s = load_settings()
    expected = tmp_path / "state" / "dataset" / "dataset.jsonl"
    assert dataset_path(s) == expected
    assert s.dataset_path == expected  # the trainer reads the file extraction writes


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("LEARNSTREAM_EXTRACT__CONCURRENCY", "0", "greater than or equal to 1"),
        ("LEARNSTREAM_EXTRACT__MERGE_THRESHOLD", "1.5", "less than or equal to 1"),
        ("LEARNSTREAM_EXTRACT__TEMPERATURE", "-0.1", "greater than or equal to 0"),
        ("LEARNSTREAM_EXTRACT__LLM_BASE_URL", "localhost:8080", "http:// or https://"),
        ("LEARNSTREAM_EXTRACT__NOPE", "1", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert env in str(err.value)
    assert message in str(err.value)
