"""`learnstream adapters list` without --base-model lists every base model in the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream.core.settings import load_settings
from trainers.adapters import AdapterStore
from trainers.commands import adapters, registered_base_models


def _register(registry: AdapterStore, tmp: Path, name: str) -> int:
    adapter = tmp / f"adapter-{name}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    return registry.register(
        adapter, metrics={"eval_loss_candidate": 1.0}, lineage={"train_examples": 3}, config={}
    )


def test_list_shows_every_base_model_unless_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEARNSTREAM_BASE_MODEL", raising=False)
    root = load_settings().adapters_dir
    first = AdapterStore(root, "/models/tiny")
    second = AdapterStore(root, "org/other-model")
    _register(first, tmp_path, "a")
    _register(second, tmp_path, "b")
    second.activate(1)
    (root / "stray-folder").mkdir()  # no manifest, no version: not a base model

    assert registered_base_models(root) == ["/models/tiny", "org/other-model"]
    out = CliRunner().invoke(adapters, ["list"])
    assert out.exit_code == 0, out.output
    assert "base model /models/tiny (" in out.output, out.output
    assert "base model org/other-model (" in out.output, out.output
    assert len(re.findall(r"^[* ] v0001 ", out.output, re.M)) == 2, out.output
    assert "active: none (base model)" in out.output and "active: v0001" in out.output

    out = CliRunner().invoke(adapters, ["list", "--base-model", "org/other-model"])
    assert out.exit_code == 0, out.output
    assert "/models/tiny" not in out.output and "* v0001" in out.output, out.output


def test_list_of_an_empty_registry_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    out = CliRunner().invoke(adapters, ["list"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"no adapters registered in {tmp_path / 'adapters'}"


def test_show_without_base_model_uses_the_registrys_only_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEARNSTREAM_BASE_MODEL", raising=False)
    registry = AdapterStore(load_settings().adapters_dir, "/runs/x/models/tiny")
    registry.activate(_register(registry, tmp_path, "a"))
    out = CliRunner().invoke(adapters, ["show"])
    assert out.exit_code == 0, out.output
    assert '"base_model": "/runs/x/models/tiny"' in out.output, out.output
    # With a base model named in the environment, that one is meant.
    monkeypatch.setenv("LEARNSTREAM_BASE_MODEL", "org/named")
    out = CliRunner().invoke(adapters, ["show"])
    assert out.exit_code == 1 and "no active adapter for org/named" in out.output, out.output
