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
from learnstream.core.settings import Settings, TrainingSettings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from tests.tinymodel import TOPICS, write_dataset
from trainers.adapters import AdapterStore
from trainers.data import assign_split, normalize_query
from trainers.evaluate import SHIPPED_GOLDEN, EvalResult, load_golden
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job
from trainers.train import RunResult, TrainConfig

BASE = "org/base"


class Fakes:
    """Stand-ins for trainers.train.main and trainers.evaluate.evaluate_sets.

    ``losses`` are the eval-split losses per adapter, ``golden`` the golden-set ones (default:
    the same); each example's loss is the mean loss times its 10 tokens, plus ``spread``
    (per example, alternating sign) when set, so the bootstrap sees varied examples.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.losses = {"active": 2.0, "candidate": 1.5}
        self.golden: dict[str, float] | None = None
        self.spread: dict[str, list[float]] = {}
        self.trained: list[TrainConfig] = []
        self.evaluated: list[dict[str, Path | None]] = []
        self.sets: list[dict[str, int]] = []
        self.during_eval: Callable[[], Any] | None = None
        self.fail_training = False
        monkeypatch.setattr(trainers.train, "main", self.train)
        monkeypatch.setattr(trainers.evaluate, "evaluate_sets", self.evaluate_sets)

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

    def _result(self, loss: float, name: str, n: int) -> EvalResult:
        spread = self.spread.get(name, [0.0] * n)
        per = tuple((10 * loss + spread[k % len(spread)], 10) for k in range(n))
        mean = sum(nll for nll, _ in per) / (10 * n)
        return EvalResult(mean, 2.718, 10 * n, n, 0.01, per)

    def evaluate_sets(
        self,
        base_model: str,
        sets: Mapping[str, Sequence[Any]],
        adapters: Mapping[str, Path | None],
        settings: TrainingSettings | None = None,
    ) -> dict[str, dict[str, EvalResult]]:
        self.evaluated.append(dict(adapters))
        self.sets.append({name: len(convs) for name, convs in sets.items()})
        if self.during_eval:
            self.during_eval()
        out = {}
        for set_name, conversations in sets.items():
            losses = self.losses if set_name == "eval" else (self.golden or self.losses)
            out[set_name] = {
                name: self._result(losses[name], name, len(conversations)) for name in adapters
            }
        return out


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
    registry = AdapterStore.for_settings(settings)
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
    registry = AdapterStore.for_settings(settings)
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
    registry = AdapterStore.for_settings(settings)
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


# --- promotion that means better: the bootstrap interval and the golden set --------------------


def test_the_result_shows_the_interval_and_the_golden_numbers(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path)
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    assert result.status == "promoted", result.reason
    assert fakes.sets[0]["golden"] == len(load_golden(SHIPPED_GOLDEN)) >= 20
    m = result.metrics
    assert m["improvement_ci_low"] == pytest.approx(0.25)  # every example 25% better
    assert m["improvement_ci_high"] == pytest.approx(0.25)
    assert (m["golden_loss_active"], m["golden_loss_candidate"]) == (2.0, 1.5)
    assert m["golden_relative_change"] == pytest.approx(-0.25)
    assert result.golden_examples == fakes.sets[0]["golden"]
    assert "95% interval [+25.00%, +25.00%]" in result.reason
    assert "golden set loss 1.5000 vs 2.0000" in result.reason
    decision = AdapterStore.for_settings(settings).show(1).decision
    assert decision is not None
    assert decision["improvement_interval"] == pytest.approx([0.25, 0.25])
    assert decision["golden"]["examples"] == result.golden_examples


def test_better_on_the_split_but_worse_on_the_golden_set_is_rejected(
    tmp_path: Path, fakes: Fakes
) -> None:
    settings = _settings(tmp_path)
    fakes.golden = {"active": 2.0, "candidate": 2.1}
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    assert result.status == "rejected"
    assert "worse on the golden set (+5.00%" in result.reason
    assert result.metrics["eval_loss_candidate"] < result.metrics["eval_loss_active"]
    assert AdapterStore.for_settings(settings).active_version() is None


def test_an_improvement_carried_by_few_examples_is_rejected(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path)
    fakes.losses = {"active": 2.0, "candidate": 2.0}
    # the candidate is much better on one example in ten, slightly worse on the rest
    fakes.spread = {"candidate": [-4.0] + [0.2] * 9}
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    m = result.metrics
    assert m["relative_improvement"] >= 0.01  # the point estimate alone would promote
    assert m["improvement_ci_low"] < 0.01
    assert result.status == "rejected"
    assert "not confidently better" in result.reason


def test_a_configured_golden_set_that_is_missing_fails_the_job(
    tmp_path: Path, fakes: Fakes
) -> None:
    settings = _settings(tmp_path, golden_path=tmp_path / "nope.jsonl")
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    assert result.status == "failed"
    assert "nope.jsonl" in result.reason and "GOLDEN_PATH" in result.reason
    assert fakes.trained == []


def test_golden_questions_are_kept_out_of_training(tmp_path: Path, fakes: Fakes) -> None:
    golden = tmp_path / "golden.jsonl"
    asked = [f"How do I {TOPICS[q % len(TOPICS)]} in project {q}?" for q in range(10)]
    golden.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": "git rebase main"},
                    ]
                }
            )
            + "\n"
            for question in asked
        )
    )
    settings = _settings(tmp_path, golden_path=golden)
    in_train = [
        q for q in asked if assign_split(normalize_query(q), 0.2, settings.training.seed) == "train"
    ]
    assert in_train  # the test means something
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    assert fakes.sets[0] == {"eval": result.eval_examples, "golden": 10}
    train = fakes.trained[0].train
    users = {m["content"] for conv in train for m in conv if m["role"] == "user"}
    assert not users & set(asked)
    assert len(train) == result.train_examples - 2 * len(in_train)  # 2 examples per query
    assert result.metrics["golden_overlap_left_out"] == 2 * len(in_train)
    # the system prompt is added to golden conversations without one
    conversation = load_golden(golden, "SYS")[0]
    assert conversation[0] == {"role": "system", "content": "SYS"}


def test_without_the_golden_set_the_split_alone_decides(tmp_path: Path, fakes: Fakes) -> None:
    settings = _settings(tmp_path, golden_set=False)
    fakes.golden = {"active": 2.0, "candidate": 9.0}
    result = run_training_job(settings, _trigger("a"), metrics=TrainingMetrics.on())
    assert result.status == "promoted"
    assert fakes.sets[0].keys() == {"eval"}
    assert "golden_loss_active" not in result.metrics


def test_golden_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_golden(bad)
    bad.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}\n'
    )
    with pytest.raises(ValueError, match="end with the assistant"):
        load_golden(bad)
