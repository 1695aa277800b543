"""run_training_job's control flow with training and evaluation faked (no model, fast)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import trainers.evaluate
import trainers.train
from learnstream.settings import Settings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from tests.tinymodel import write_dataset
from trainers.config import TrainingSettings
from trainers.evaluate import EvalResult
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job
from trainers.registry import AdapterRegistry
from trainers.train import RunResult, TrainConfig

BASE = "org/base"


class Fakes:
    """Stand-ins for trainers.train.main and trainers.evaluate.evaluate_adapters."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.losses = {"active": 2.0, "candidate": 1.5}
        self.trained: list[TrainConfig] = []
        self.evaluated: list[dict[str, Path | None]] = []
        self.during_eval: Callable[[], Any] | None = None
        self.fail_training = False
        monkeypatch.setattr(trainers.train, "main", self.train)
        monkeypatch.setattr(trainers.evaluate, "evaluate_adapters", self.evaluate)

    def train(self, config: TrainConfig) -> RunResult:
        self.trained.append(config)
        if self.fail_training:
            raise RuntimeError("CUDA out of memory")
        out = config.output_dir
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": 8}))
        (out / "adapter_model.safetensors").write_bytes(b"weights")
        return RunResult(
            out, 1.0, 3, len(config.train), 1.0, 0.1, 10.0, "cpu", False, "assistant", 8
        )

    def evaluate(
        self,
        base_model: str,
        conversations: Sequence[Any],
        adapters: Mapping[str, Path | None],
        settings: TrainingSettings | None = None,
    ) -> dict[str, EvalResult]:
        self.evaluated.append(dict(adapters))
        if self.during_eval:
            self.during_eval()
        return {
            name: EvalResult(self.losses[name], 2.718, 100, len(conversations), 0.01)
            for name in adapters
        }


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch)


def _settings(tmp_path: Path, **training: Any) -> Settings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        base_model=BASE,
        training=TrainingSettings(min_eval_examples=5, **training),
    )
    write_dataset(settings.dataset_path, queries=60)
    return settings


def _trigger(trigger_id: str) -> TrainingTrigger:
    return TrainingTrigger(trigger_id=trigger_id, base_model=BASE, reasons=[TriggerReason.TIME])


def test_promote_then_compare_with_the_active_adapter(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path)
    metrics = CollectorRegistry()
    m = TrainingMetrics.on(metrics)
    first = run_training_job(settings, _trigger("a"), metrics=m)
    assert first.status == "promoted", first.reason
    assert fakes.evaluated[0]["active"] is None  # no adapter yet: the bare base model
    config = fakes.trained[0]
    assert config.base_model == BASE
    assert all(m["role"] in {"system", "user", "assistant"} for m in config.train[0])
    assert first.train_examples == len(config.train)
    assert first.train_examples + first.eval_examples == 120

    fakes.losses = {"active": 1.5, "candidate": 1.49}  # 0.67% better: not enough
    second = run_training_job(settings, _trigger("b"), metrics=m)
    assert second.status == "rejected"
    registry = AdapterRegistry.for_settings(settings)
    assert fakes.evaluated[1]["active"] == registry.version_dir(1)
    assert (second.candidate_version, second.active_version) == (2, 1)
    assert second.metrics["relative_improvement"] == pytest.approx(0.01 / 1.5)
    assert not registry.run_dir("b").exists()
    assert (registry.version_dir(2) / "dataset.jsonl").exists()
    labels = {"base_model": BASE}
    assert metrics.get_sample_value("learnstream_active_model_version", labels) == 1.0
    assert metrics.get_sample_value(
        "learnstream_training_relative_improvement", labels
    ) == pytest.approx(0.01 / 1.5)


def test_an_activation_during_the_job_wins(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path)
    run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on(CollectorRegistry()))
    registry = AdapterRegistry.for_settings(settings)
    fakes.during_eval = registry.rollback  # an operator rolls back to the base model meanwhile
    result = run_training_job(
        settings, _trigger("b"), metrics=TrainingMetrics.on(CollectorRegistry())
    )
    assert result.status == "rejected"
    assert "active version changed during the job (v0001 -> base model)" in result.reason
    assert (result.candidate_version, result.active_version) == (2, None)
    assert registry.active_version() is None


def test_training_errors_become_a_failed_result(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path)
    fakes.fail_training = True
    metrics = CollectorRegistry()
    result = run_training_job(settings, _trigger("x"), metrics=TrainingMetrics.on(metrics))
    assert result.status == "failed"
    assert result.reason == "RuntimeError: CUDA out of memory"
    registry = AdapterRegistry.for_settings(settings)
    record = registry.read_job("x")
    assert record is not None
    assert record.state == "done"
    assert registry.versions() == []
    assert not registry.run_dir("x").exists()
    labels = {"base_model": BASE, "status": "failed"}
    assert metrics.get_sample_value("learnstream_training_runs_total", labels) == 1.0
    # A duplicate of the failed trigger is recognized too.
    fakes.fail_training = False
    again = run_training_job(settings, _trigger("x"), metrics=TrainingMetrics.on(metrics))
    assert again == result
    assert len(fakes.trained) == 1
