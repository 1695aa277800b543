"""Promotion means better: the golden set vetoes a candidate that only fits the dataset (tiny
local model, CPU, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from learnstream.core.settings import TrainingSettings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from tests.tinymodel import FAST, TOPICS, build_tiny_model, write_dataset
from trainers.adapters import AdapterStore
from trainers.pipeline import run_training_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The dataset's questions asked again (other projects) with answers unlike the dataset's: what
# the candidate learns from the dataset makes these answers less likely than the base does.
ODD_ANSWERS = ("q" * 48, "q" * 40, "q" * 56)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _golden(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for n in range(12):
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {
                                "role": "user",
                                "content": f"How do I {TOPICS[n % len(TOPICS)]} in project "
                                f"{900 + n}?",
                            },
                            {"role": "assistant", "content": ODD_ANSWERS[n % len(ODD_ANSWERS)]},
                        ]
                    }
                )
                + "\n"
            )
    return path


def _run(tmp_path: Path, tiny_model: str, trigger_id: str, **training: Any) -> Any:
    settings = load_settings(
        data_dir=tmp_path / "data",
        base_model=tiny_model,
        training=TrainingSettings(**{**FAST, "max_steps": 40, "learning_rate": 1e-2, **training}),
    )
    if not settings.dataset_path.exists():
        write_dataset(settings.dataset_path, queries=40)
    trigger = TrainingTrigger(
        trigger_id=trigger_id, base_model=tiny_model, reasons=[TriggerReason.MANUAL]
    )
    return settings, run_training_job(settings, trigger)


def test_better_on_the_split_but_worse_on_the_golden_set_is_rejected(
    tiny_model: str, tmp_path: Path
) -> None:
    golden = _golden(tmp_path / "golden.jsonl")
    settings, result = _run(tmp_path, tiny_model, "t-golden", golden_path=golden)
    m = result.metrics
    print(result.reason)
    # The candidate is clearly better on the dataset's eval split, confidently so ...
    assert m["eval_loss_candidate"] < m["eval_loss_active"] * 0.99
    assert m["improvement_ci_low"] >= 0.01
    # ... but worse on the golden set, so it is rejected, and the reason says why.
    assert m["golden_loss_candidate"] > m["golden_loss_active"]
    assert m["golden_relative_change"] > 0
    assert result.status == "rejected", result.reason
    assert "worse on the golden set" in result.reason
    assert "golden set loss" in result.reason and "interval" in result.reason
    assert result.golden_examples == 12
    registry = AdapterStore.for_settings(settings, tiny_model)
    assert registry.active_version() is None
    decision = registry.show(result.candidate_version).decision
    assert decision is not None and decision["promote"] is False
    assert decision["golden"]["examples"] == 12

    # The same candidate without the golden set (the split alone decides) would be promoted.
    _, free = _run(tmp_path, tiny_model, "t-no-golden", golden_set=False)
    assert free.status == "promoted", free.reason
    assert "golden_loss_active" not in free.metrics
