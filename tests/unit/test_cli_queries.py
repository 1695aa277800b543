"""`patterns search|top` without a worker, and `dataset validate --tokenizer`, as a user runs
them (subprocesses). The worker side is in tests/integration/test_patterns_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from learnstream.core.net import free_port


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    # a web port nobody listens on: no worker answers
    env.update(LEARNSTREAM_DATA_DIR=str(data), LEARNSTREAM_WORKER__WEB_PORT=str(free_port()))
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "learnstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def held_store(tmp_path: Path) -> Iterator[Path]:
    """Another process holds the Qdrant folder under ``tmp_path/data`` (as a worker does)."""
    folder = tmp_path / "data" / "qdrant"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom qdrant_client import QdrantClient\n"
            f"c = QdrantClient(path={str(folder)!r})\nprint('held', flush=True)\n"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield tmp_path / "data"
    finally:
        holder.communicate(timeout=30)  # closing stdin lets it exit


@pytest.mark.parametrize("command", [["patterns", "top"], ["patterns", "search", "pytest"]])
def test_a_held_store_and_no_worker_give_one_line(held_store: Path, command: list[str]) -> None:
    # A model that cannot load: the line comes before any model would be loaded.
    env = _env(held_store, LEARNSTREAM_EMBEDDING__MODEL="/nonexistent/model")
    line = _one_error_line(_cli(env, *command))
    assert "held by another process" in line and str(held_store / "qdrant") in line
    assert "no worker answers at http://127.0.0.1:" in line
    assert "LEARNSTREAM_QDRANT__URL" in line


def test_without_a_worker_the_command_opens_the_store_itself(tmp_path: Path) -> None:
    out = _cli(_env(tmp_path / "data"), "patterns", "top")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no patterns yet"
    assert (tmp_path / "data" / "qdrant").is_dir()


def test_an_explicit_url_with_no_worker_there_fails_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_error_line(_cli(_env(tmp_path / "data"), "patterns", "top", "--url", url))
    assert f"no worker answers at {url}" in line
    assert not (tmp_path / "data" / "qdrant").exists()  # the store was not opened


def _dataset(data: Path) -> None:
    from tests.tinymodel import write_dataset

    path = data / "dataset" / "dataset.jsonl"
    path.parent.mkdir(parents=True)
    write_dataset(path, queries=2)


@pytest.mark.parametrize("offline", [True, False])
def test_validate_with_an_uncached_hub_name_offline_gives_one_line(
    tmp_path: Path, offline: bool
) -> None:
    _dataset(tmp_path / "data")
    hub = {"HF_HUB_OFFLINE": "1"} if offline else {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    env = _env(tmp_path / "data", HF_HOME=str(tmp_path / "hf"))  # an empty cache
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    env.update(hub)
    line = _one_error_line(
        _cli(env, "dataset", "validate", "--tokenizer", "someone/not-cached-model")
    )
    assert "'someone/not-cached-model'" in line
    assert "not in the Hugging Face cache" in line
    assert ("HF_HUB_OFFLINE is set" in line) is offline
    assert ("cannot be reached" in line) is not offline


def test_validate_with_a_missing_tokenizer_folder_gives_one_line(tmp_path: Path) -> None:
    _dataset(tmp_path / "data")
    line = _one_error_line(
        _cli(_env(tmp_path / "data"), "dataset", "validate", "--tokenizer", "./no-such-folder")
    )
    assert "tokenizer folder ./no-such-folder does not exist" in line


@pytest.mark.slow
def test_validate_with_a_tokenizer_folder_counts_tokens(tmp_path: Path) -> None:
    from trainers.tiny import build_tiny_model

    _dataset(tmp_path / "data")
    model = build_tiny_model(tmp_path / "tiny")
    env = _env(tmp_path / "data", HF_HUB_OFFLINE="1")
    ok = _cli(env, "dataset", "validate", "--tokenizer", str(model))
    assert ok.returncode == 0, ok.stderr
    too_long = _cli(env, "dataset", "validate", "--tokenizer", str(model), "--max-tokens", "3")
    assert too_long.returncode == 1, too_long.stdout
    assert "Traceback" not in too_long.stderr
