"""The training loop end to end on a tiny local model (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from learnstream.core.settings import Settings, TrainingSettings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from tests.tinymodel import FAST, RecordingServer, build_tiny_model, write_dataset
from trainers.adapters import AdapterStore
from trainers.data import prepare_dataset
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _settings(tmp_path: Path, base_model: str, **training: Any) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        base_model=base_model,
        training=TrainingSettings(**{**FAST, **training}),
    )


def _trigger(trigger_id: str, base_model: str) -> TrainingTrigger:
    return TrainingTrigger(
        trigger_id=trigger_id, base_model=base_model, reasons=[TriggerReason.LEARNINGS]
    )


def test_training_changes_the_adapter_and_evaluation_is_finite(
    tiny_model: str, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from trainers.evaluate import evaluate_adapters
    from trainers.train import TrainConfig, main

    dataset = write_dataset(tmp_path / "d.jsonl", queries=40)
    data = prepare_dataset(dataset, tmp_path / "run", eval_fraction=0.25, seed=0)
    settings = TrainingSettings(**FAST)
    progress: list[tuple[int, int, float | None]] = []
    run = main(
        TrainConfig(
            base_model=tiny_model,
            output_dir=tmp_path / "adapter",
            train=[e.messages for e in data.train],
            settings=settings,
            on_progress=lambda *args: progress.append(args),
        )
    )
    assert run.steps == 12
    assert run.loss_on == "assistant"
    assert math.isfinite(run.train_loss)
    assert progress
    assert progress[-1][:2] == (12, 12)
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b
    assert all(float(t.abs().sum()) > 0 for t in lora_b)  # lora_B starts at zero
    assert not (tmp_path / "adapter" / "trainer").exists()

    evals = evaluate_adapters(
        tiny_model,
        [e.messages for e in data.eval],
        {"base": None, "candidate": run.adapter_dir},
        settings,
    )
    for result in evals.values():
        assert math.isfinite(result.loss)
        assert math.isfinite(result.perplexity)
        assert result.examples == len(data.eval)
    assert evals["candidate"].loss < evals["base"].loss
    everything = evaluate_adapters(
        tiny_model,
        [e.messages for e in data.eval],
        {"base": None},
        settings.model_copy(update={"loss_on": "all"}),
    )
    assert everything["base"].tokens > evals["base"].tokens


def test_training_job_promotes_dedups_rejects_and_fails_cleanly(
    tiny_model: str, tmp_path: Path
) -> None:
    server = RecordingServer()
    try:
        settings = _settings(tmp_path, tiny_model, vllm_servers=[server.url])
        write_dataset(settings.dataset_path, queries=40)
        metrics = CollectorRegistry()
        m = TrainingMetrics.on(metrics)
        registry = AdapterStore.for_settings(settings, tiny_model)

        first = run_training_job(settings, _trigger("t-1", tiny_model), metrics=m)
        assert first.status == "promoted", first.reason
        assert (first.candidate_version, first.active_version) == (1, 1)
        assert first.metrics["eval_loss_candidate"] < first.metrics["eval_loss_active"]
        assert first.metrics["relative_improvement"] >= 0.01
        assert "base model (no active adapter)" in first.reason
        for key in ("snapshot", "train", "evaluate", "register", "activate", "hotswap", "total"):
            assert key in first.durations_s
        assert first.eval_examples >= 5
        assert first.dataset_hash
        assert registry.active_version() == 1
        v1 = registry.version_dir(1)
        lineage = json.loads((v1 / "lineage.json").read_text())
        assert lineage["dataset_hash"] == first.dataset_hash
        assert "p0" in lineage["pattern_ids"]
        assert (v1 / "adapter_model.safetensors").exists()
        assert (v1 / "dataset.jsonl").exists()
        assert server.calls[-1] == (
            "/v1/load_lora_adapter",
            {"lora_name": "learnstream", "lora_path": str(v1)},
        )
        gauge = metrics.get_sample_value(
            "learnstream_active_model_eval_loss", {"base_model": tiny_model}
        )
        assert gauge == pytest.approx(first.metrics["eval_loss_candidate"])

        # The same trigger again (redelivery): recognized, nothing trained.
        again = run_training_job(settings, _trigger("t-1", tiny_model), metrics=m)
        assert again == first
        assert registry.versions() == [1]

        # A candidate that is not better enough is registered but not promoted.
        strict = _settings(tmp_path, tiny_model, min_improvement=0.9)
        second = run_training_job(strict, _trigger("t-2", tiny_model), metrics=m)
        assert second.status == "rejected", second.reason
        assert "not better enough" in second.reason
        assert "the active adapter v0001" in second.reason
        assert (second.candidate_version, second.active_version) == (2, 1)
        assert registry.active_version() == 1
        decision = registry.show(2).decision
        assert decision is not None
        assert decision["promote"] is False

        # Errors become a failed result, never an exception.
        broken = run_training_job(
            settings, _trigger("t-3", str(tmp_path / "no-such-model")), metrics=m
        )
        assert broken.status == "failed"
        assert broken.reason
        print(first.reason, second.reason, broken.reason, sep="\n")
        labels = {"base_model": tiny_model, "status": "promoted"}
        assert metrics.get_sample_value("learnstream_training_runs_total", labels) == 1.0
    finally:
        server.close()
