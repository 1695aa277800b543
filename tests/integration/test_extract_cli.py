"""`learnstream patterns search|top` and `dataset stats|validate`, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from extractors.stage import ExtractionStage
from learnstream.core.settings import load_settings
from scorers.embeddings import Embedder
from scorers.vectors import ensure_collections, qdrant_client
from tests.unit.test_extract_support import candidate

pytestmark = pytest.mark.integration


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "learnstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_patterns_and_dataset_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    empty = _cli(data_dir, "patterns", "top")
    assert empty.returncode == 0, empty.stderr
    assert "no patterns yet" in empty.stdout

    settings = load_settings(data_dir=data_dir)
    embedder = Embedder(settings.embedding, CollectorRegistry())
    embedder.load()
    client = qdrant_client(settings)
    ensure_collections(client, settings.embedding.dimensions)
    stage = ExtractionStage.create(settings, embedder, client, CollectorRegistry())
    try:
        results = stage.process(
            [
                candidate("ev-1", query="How do I set a static IP address in NixOS?"),
                candidate("ev-2", query="How do I write a multi-stage Dockerfile for FastAPI?"),
            ]
        )
    finally:
        stage.close()
        client.close()
    names = {r.learned.pattern.name for r in results}

    top = _cli(data_dir, "patterns", "top", "--limit", "5")
    assert top.returncode == 0, top.stderr
    assert all(name in top.stdout for name in names), top.stdout

    found = _cli(data_dir, "patterns", "search", "NixOS networking static address", "--limit", "1")
    assert found.returncode == 0, found.stderr
    nixos = next(r for r in results if r.event_id == "ev-1").learned.pattern
    assert nixos.name in found.stdout and nixos.pattern_id in found.stdout

    stats = _cli(data_dir, "dataset", "stats")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["lines"] == 2
    ok = _cli(data_dir, "dataset", "validate")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    dataset = data_dir / "dataset" / "dataset.jsonl"
    with dataset.open("a") as f:
        f.write('{"messages": [{"role": "user", "content": ""}], "metadata": {}}\n')
    bad = _cli(data_dir, "dataset", "validate")
    assert bad.returncode == 1, bad.stdout
    assert "3" in bad.stdout  # the bad line is named
