"""Shared test helpers: every test gets its own data directory and a clean LEARNSTREAM_* env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LEARNSTREAM_* variable from the caller's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LEARNSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "data"))
    yield
