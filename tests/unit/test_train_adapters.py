"""The adapter store, job records and the pipeline paths that need no model."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from learnstream.core.settings import Settings, TrainingSettings, load_settings
from schemas.training import TrainingResult, TrainingTrigger, TriggerReason
from tests.tinymodel import write_dataset
from trainers.adapters import (
    AdapterStore,
    AdapterStoreError,
    JobRecord,
    parse_version,
    slugify,
)
from trainers.commands import adapters
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job

BASE = "Org/Tiny-Model"


def _adapter(folder: Path, tag: str = "x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "tag": tag}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights-" + tag.encode())
    (folder / "README.md").write_text("peft card")
    return folder


def _register(registry: AdapterStore, tmp_path: Path, tag: str, **metrics: float) -> int:
    return registry.register(
        _adapter(tmp_path / f"adapter-{tag}", tag),
        metrics={"eval_loss_active": 2.0, "eval_loss_candidate": 1.5, **metrics},
        lineage={"dataset_hash": "abc", "train_examples": 40, "eval_examples": 12},
        config={"trigger_id": tag},
    )


def _trigger(trigger_id: str = "t-1", base_model: str = BASE) -> TrainingTrigger:
    return TrainingTrigger(
        trigger_id=trigger_id, base_model=base_model, reasons=[TriggerReason.MANUAL]
    )


def _settings(tmp_path: Path, **training: Any) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        training=TrainingSettings(min_eval_examples=10, **training),
    )


def test_slugify() -> None:
    assert slugify("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "qwen--qwen2.5-coder-0.5b-instruct"
    assert slugify("/tmp/models/tiny") == "tmp--models--tiny"
    long = slugify("x" * 300)
    assert len(long) <= 80
    assert long != slugify("x" * 301)
    assert parse_version("v0003") == parse_version("3") == 3
    with pytest.raises(AdapterStoreError):
        parse_version("latest")


def test_register_activate_rollback(tmp_path: Path) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    assert registry.active_version() is None
    assert registry.list_versions() == []
    v1 = _register(registry, tmp_path, "a")
    v2 = _register(registry, tmp_path, "b")
    assert (v1, v2) == (1, 2)
    folder = registry.version_dir(2)
    assert folder.name == "v0002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "lineage.json",
        "metrics.json",
        "training_config.json",
    ]
    assert registry.active_version() is None  # registering does not activate

    assert registry.activate(1) is None
    assert registry.activate(2) == 1
    assert registry.active_path() == folder
    info = registry.show()
    assert (info.version, info.active, info.metrics["eval_loss_candidate"]) == (2, True, 1.5)
    assert info.config["base_model"] == BASE

    assert registry.rollback() == 1
    assert registry.rollback() is None  # before v1 the bare base model was active
    with pytest.raises(AdapterStoreError, match="nothing to roll back"):
        registry.rollback()
    manifest = registry.manifest()
    assert [h["action"] for h in manifest["history"]] == [
        "activate",
        "activate",
        "rollback",
        "rollback",
    ]
    with pytest.raises(AdapterStoreError, match="no version v0009"):
        registry.activate(9)


def test_activation_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    _register(registry, tmp_path, "a")
    _register(registry, tmp_path, "b")
    registry.activate(1)
    before = registry.manifest_path.read_bytes()

    def crash(*_: Any) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        registry.activate(2)
    monkeypatch.undo()
    assert registry.manifest_path.read_bytes() == before
    assert registry.active_version() == 1
    assert not [p for p in registry.dir.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_register_leaves_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    _register(registry, tmp_path, "a")
    import trainers.adapters as module

    def broken(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(module.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        _register(registry, tmp_path, "b")
    monkeypatch.undo()
    assert registry.versions() == [1]
    assert [p.name for p in registry.dir.iterdir() if p.name.startswith(".staging")] == []
    assert _register(registry, tmp_path, "c") == 2


def test_concurrent_registers_get_distinct_versions(tmp_path: Path) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    adapter = _adapter(tmp_path / "adapter")
    got: list[int] = []

    def work() -> None:
        got.append(registry.register(adapter, metrics={}, lineage={}, config={}))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]


def test_a_crash_between_register_and_activate_resumes_at_the_decision(
    tmp_path: Path,
) -> None:
    """The manifest stays consistent, and the redelivered trigger finishes without training."""
    settings = _settings(tmp_path)
    registry = AdapterStore.for_settings(settings, BASE)
    _register(registry, tmp_path, "old")
    registry.activate(1)
    # The crashed attempt: candidate v2 registered (compared with v1), job record says so.
    _register(registry, tmp_path, "new", eval_loss_active=2.0, eval_loss_candidate=1.0)
    registry.write_job(
        JobRecord(trigger_id="t-crash", state="registered", candidate_version=2, compared_with=1)
    )
    assert registry.active_version() == 1
    assert [(v.version, v.active) for v in registry.list_versions()] == [(1, True), (2, False)]

    metrics = CollectorRegistry()
    result = run_training_job(
        settings, _trigger("t-crash"), registry, metrics=TrainingMetrics.on(metrics)
    )
    assert result.status == "promoted", result.reason
    assert (result.candidate_version, result.active_version) == (2, 2)
    assert result.metrics["relative_improvement"] == pytest.approx(0.5)
    assert "train" not in result.durations_s  # no training happened
    assert registry.active_version() == 2
    assert registry.show(2).decision["promote"] is True  # type: ignore[index]
    record = registry.read_job("t-crash")
    assert record is not None
    assert (record.state, record.attempts) == ("done", 2)
    labels = {"base_model": BASE, "status": "promoted"}
    assert metrics.get_sample_value("learnstream_training_runs_total", labels) == 1.0
    assert metrics.get_sample_value(
        "learnstream_active_model_eval_loss", {"base_model": BASE}
    ) == pytest.approx(1.0)


def test_duplicate_trigger_returns_the_stored_result(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = AdapterStore.for_settings(settings, BASE)
    stored = TrainingResult(
        trigger_id="t-dup", base_model=BASE, status="rejected", reason="stored reason"
    )
    registry.write_job(
        JobRecord(trigger_id="t-dup", state="done", result=stored.model_dump(mode="json"))
    )
    result = run_training_job(settings, _trigger("t-dup"), registry)
    assert result == stored
    assert registry.versions() == []


def test_skipped_without_enough_data_and_recorded(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    metrics = CollectorRegistry()
    m = TrainingMetrics.on(metrics)
    result = run_training_job(settings, _trigger("t-none"), metrics=m)
    assert result.status == "skipped"
    assert "no dataset" in result.reason

    write_dataset(settings.dataset_path, queries=6)
    result = run_training_job(settings, _trigger("t-few"), metrics=m)
    assert result.status == "skipped"
    assert "eval examples" in result.reason
    assert result.durations_s["snapshot"] >= 0
    registry = AdapterStore.for_settings(settings, BASE)
    record = registry.read_job("t-few")
    assert record is not None
    assert record.state == "done"
    assert record.training_result() == result
    assert not registry.run_dir("t-few").exists()
    labels = {"base_model": BASE, "status": "skipped"}
    assert metrics.get_sample_value("learnstream_training_runs_total", labels) == 2.0


def test_trigger_ids_with_odd_characters_get_safe_file_names(tmp_path: Path) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    registry.write_job(JobRecord(trigger_id="manual/../2025 01:02", state="running"))
    path = registry.job_path("manual/../2025 01:02")
    assert path.parent == registry.dir / "jobs"
    record = registry.read_job("manual/../2025 01:02")
    assert record is not None
    assert record.trigger_id == "manual/../2025 01:02"


def test_the_adapter_store_refuses_another_base_models_folder(tmp_path: Path) -> None:
    registry = AdapterStore(tmp_path / "reg", BASE)
    _register(registry, tmp_path, "a")
    registry.activate(1)
    other = AdapterStore(tmp_path / "reg", "org/tiny-model")  # same slug
    with pytest.raises(AdapterStoreError, match="belongs to base model"):
        other.active_version()


def test_adapters_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_BASE_MODEL", BASE)
    registry = AdapterStore.for_settings(load_settings())
    _register(registry, tmp_path, "a")
    _register(registry, tmp_path, "b")
    runner = CliRunner()

    out = runner.invoke(adapters, ["list"])
    assert out.exit_code == 0, out.output
    assert "v0001" in out.output
    assert "active: none" in out.output

    out = runner.invoke(adapters, ["activate", "v2"])
    assert out.exit_code == 0, out.output
    assert "active v0002 (was none)" in out.output
    out = runner.invoke(adapters, ["list"])
    assert "* v0002" in out.output

    out = runner.invoke(adapters, ["show"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert (shown["version"], shown["active"]) == (2, True)

    out = runner.invoke(adapters, ["rollback"])
    assert out.exit_code == 0, out.output
    assert "rolled back to none (base model) (was v0002)" in out.output

    out = runner.invoke(adapters, ["activate", "7"])
    assert out.exit_code == 1
    assert "no version v0007" in out.output
    out = runner.invoke(adapters, ["show", "--base-model", "other/model"])
    assert out.exit_code == 1
    assert "no active adapter for other/model" in out.output
