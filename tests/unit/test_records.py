"""The pipeline's own records: weights, scored interactions, dead letters, dataset examples."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import (
    DatasetExample,
    DeadLetter,
    FactorScores,
    Interaction,
    ScoredInteraction,
    ScoreWeights,
    Source,
    TrainingTrigger,
)


def test_default_weights_are_the_design_weights() -> None:
    w = ScoreWeights()
    assert (w.outcome, w.feedback, w.reusability, w.complexity, w.novelty) == (
        0.40,
        0.20,
        0.20,
        0.10,
        0.10,
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"outcome": 0.5}, "must sum to 1, they sum to 1.1"),
        ({"outcome": 0.6, "feedback": -0.2}, "greater than or equal to 0"),
    ],
)
def test_weights_are_validated(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScoreWeights(**weights)


def test_scored_interaction_round_trips_through_json() -> None:
    interaction = Interaction(
        event_id="e1",
        source=Source.AIDB,
        event_type="completion",
        key="s1",
        timestamp=datetime(2026, 11, 2, tzinfo=UTC),
        scorable=True,
        query="q",
    )
    scored = ScoredInteraction(
        interaction=interaction,
        score=0.82,
        factors=FactorScores(outcome=1, feedback=0.5, reusability=0.3, complexity=0.5, novelty=1),
        weights=ScoreWeights(),
        inputs={"outcome": {"success": True}},
        high_value=True,
        scorer_version="1",
    )
    again = ScoredInteraction.model_validate_json(scored.model_dump_json())
    assert again == scored
    assert again.event_id == "e1"
    with pytest.raises(ValidationError):
        FactorScores(outcome=1.2, feedback=0, reusability=0, complexity=0, novelty=0)


def test_records_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        TrainingTrigger(trigger_id="t", base_model="m", reasons=["manual"], surprise=1)  # type: ignore[call-arg]


def test_dead_letter_keeps_the_original_bytes() -> None:
    raw = b'\xff{"broken": '
    dl = DeadLetter.from_bytes(
        raw,
        key=b"k1",
        topic="telemetry.ralph",
        partition=2,
        offset=7,
        stage="score",
        error="malformed JSON",
    )
    again = DeadLetter.model_validate_json(dl.model_dump_json())
    assert again.original() == raw
    assert again.original_key_b64 == "azE="
    assert again.schema_version == 1


def test_dataset_example_needs_roles_and_content() -> None:
    meta = {
        "pattern_id": "p",
        "event_id": "e",
        "source": "aidb",
        "timestamp": "2026-11-02T00:00:00Z",
    }
    ok = DatasetExample.model_validate(
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "metadata": meta,
        }
    )
    assert ok.metadata.pattern_id == "p"
    with pytest.raises(ValidationError):
        DatasetExample.model_validate(
            {
                "messages": [
                    {"role": "robot", "content": "q"},
                    {"role": "assistant", "content": ""},
                ],
                "metadata": meta,
            }
        )
