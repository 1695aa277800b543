"""The composite value score: hand-computed cases, weights, threshold, lifecycle, determinism."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Interaction, Outcome, ScoredInteraction, ScoreWeights, parse_event
from scorers import score as score_module
from scorers.normalize import normalize
from scorers.score import (
    NOVELTY_MIN_COSINE,
    NOVELTY_TOP_K,
    REUSABILITY_MIN_COSINE,
    REUSABILITY_TOP_K,
    SCORER_VERSION,
    Lookups,
    score_interaction,
)
from tests.unit.events import event

AT = datetime(2026, 11, 2, 10, 0, 0, tzinfo=UTC)
DEFAULT = ScoreWeights()
CODE_AND_EXPLANATION = (
    "Added a fixture that patches the consumer and asserts it is closed on teardown.\n\n"
    "```python\n@pytest.fixture\ndef fake_consumer(monkeypatch):\n    yield MagicMock()\n```"
)


def interaction(**changes: Any) -> Interaction:
    fields: dict[str, Any] = {
        "event_id": "e-1",
        "source": "ralph",
        "event_type": "task_completed",
        "key": "t1",
        "timestamp": datetime(2026, 11, 2, 9, 14, 5, tzinfo=UTC),
        "scorable": True,
        "query": "Add a pytest fixture for the Kafka consumer",
        "outcome": Outcome.SUCCESS,
    }
    fields.update(changes)
    return Interaction(**fields)


def score(
    i: Interaction,
    lookups: Lookups,
    weights: ScoreWeights = DEFAULT,
    threshold: float = 0.7,
) -> ScoredInteraction:
    return score_interaction(i, lookups, weights=weights, threshold=threshold, scored_at=AT)


def test_lookup_parameters() -> None:
    assert (REUSABILITY_MIN_COSINE, REUSABILITY_TOP_K) == (0.85, 10)
    assert (NOVELTY_MIN_COSINE, NOVELTY_TOP_K) == (0.90, 5)
    assert SCORER_VERSION == "2.0"
    assert set(score_module.__all__) >= {
        "REUSABILITY_MIN_COSINE",
        "REUSABILITY_TOP_K",
        "NOVELTY_MIN_COSINE",
        "NOVELTY_TOP_K",
    }


def test_default_weights_are_the_design_weights() -> None:
    assert DEFAULT.model_dump(exclude={"schema_version"}) == {
        "outcome": 0.40,
        "feedback": 0.20,
        "reusability": 0.20,
        "complexity": 0.10,
        "novelty": 0.10,
    }


# --- hand-computed cases ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "lookups", "factors", "expected"),
    [
        pytest.param(
            {
                "iterations": 2,
                "user_feedback": 1,
                "steps": 4,
                "tools_used": ["pytest"],
                "files_modified": ["a.py", "b.py"],
                "response": CODE_AND_EXPLANATION,
            },
            Lookups(similar_earlier=3, max_known_similarity=None),
            # outcome 1.0 (success, 2 iterations); feedback 1.0 (+1); reusability 0.7 (3);
            # complexity 0.3 + 0.2 + 0.2 = 0.7; novelty 1.0 (no similar high-value one)
            # 0.4·1.0 + 0.2·1.0 + 0.2·0.7 + 0.1·0.7 + 0.1·1.0 = 0.4 + 0.2 + 0.14 + 0.07 + 0.1
            (1.0, 1.0, 0.7, 0.7, 1.0),
            0.91,
            id="successful-task",
        ),
        pytest.param(
            {"outcome": Outcome.FAILURE, "copied_to_clipboard": True},
            Lookups(similar_earlier=0, max_known_similarity=0.95),
            # outcome 0.2; feedback 0.8 (copied); reusability 0.3; complexity 0;
            # novelty 1 - 0.95 = 0.05
            # 0.4·0.2 + 0.2·0.8 + 0.2·0.3 + 0.1·0 + 0.1·0.05 = 0.08 + 0.16 + 0.06 + 0 + 0.005
            (0.2, 0.8, 0.3, 0.0, 0.05),
            0.305,
            id="failure-copied",
        ),
        pytest.param(
            {
                "iterations": 6,
                "modified_response": True,
                "steps": 1,
                "files_modified": list("abcde"),
            },
            Lookups(similar_earlier=10, max_known_similarity=0.92),
            # outcome 0.6 (6 iterations); feedback 0.6 (modified); reusability 1.0 (10);
            # complexity 0.3 (5 files); novelty 1 - 0.92 = 0.08
            # 0.4·0.6 + 0.2·0.6 + 0.2·1.0 + 0.1·0.3 + 0.1·0.08 = 0.24 + 0.12 + 0.2 + 0.03 + 0.008
            (0.6, 0.6, 1.0, 0.3, 0.08),
            0.598,
            id="slow-success-reused",
        ),
        pytest.param(
            {
                "outcome": Outcome.PARTIAL,
                "user_feedback": -1,
                "copied_to_clipboard": True,
                "steps": 3,
                "tools_used": ["nix"],
                "files_modified": list("abcd"),
                "response": CODE_AND_EXPLANATION,
            },
            Lookups(similar_earlier=1, max_known_similarity=0.9),
            # outcome 0.4; feedback 0.0 (thumbs down beats copied); reusability 0.5 (1);
            # complexity 0.3 + 0.2 + 0.3 + 0.2 = 1.0; novelty 1 - 0.9 = 0.1
            # 0.4·0.4 + 0.2·0 + 0.2·0.5 + 0.1·1.0 + 0.1·0.1 = 0.16 + 0 + 0.1 + 0.1 + 0.01
            (0.4, 0.0, 0.5, 1.0, 0.1),
            0.37,
            id="partial-thumbs-down",
        ),
        pytest.param(
            {"outcome": Outcome.UNKNOWN, "iterations": None},
            Lookups(similar_earlier=4, max_known_similarity=1.0),
            # outcome 0.4 (unknown); feedback 0.5; reusability 0.7 (4); complexity 0;
            # novelty 1 - 1.0 = 0
            # 0.4·0.4 + 0.2·0.5 + 0.2·0.7 + 0.1·0 + 0.1·0 = 0.16 + 0.1 + 0.14
            (0.4, 0.5, 0.7, 0.0, 0.0),
            0.4,
            id="unknown-known-knowledge",
        ),
    ],
)
def test_hand_computed_scores(
    changes: dict[str, Any],
    lookups: Lookups,
    factors: tuple[float, float, float, float, float],
    expected: float,
) -> None:
    s = score(interaction(**changes), lookups)
    assert s.factors is not None
    got = (
        s.factors.outcome,
        s.factors.feedback,
        s.factors.reusability,
        s.factors.complexity,
        s.factors.novelty,
    )
    assert got == pytest.approx(factors, abs=1e-12)
    assert s.score == expected  # rounded to 6 decimals, so exact
    assert s.high_value is (expected >= 0.7)
    assert s.weights == DEFAULT
    assert s.threshold == 0.7
    assert s.scorer_version == SCORER_VERSION
    assert s.scored_at == AT


def test_score_is_rounded_to_six_decimals() -> None:
    # novelty 1 - 0.9123456789 = 0.0876543211 → 0.087654 (rounded to 6 decimals, like the
    # score; the look-ups give cosines with 4); 0.1 of it = 0.0087654
    # 0.4·1 + 0.2·0.5 + 0.2·0.3 + 0 + 0.0087654 = 0.5687654 → 0.568765
    s = score(interaction(), Lookups(0, 0.9123456789))
    assert s.score == 0.568765
    assert s.factors is not None and s.factors.novelty == 0.087654


# --- custom weights --------------------------------------------------------------------------


def test_custom_weights() -> None:
    i = interaction(outcome=Outcome.FAILURE, modified_response=True, steps=2)
    lookups = Lookups(similar_earlier=5, max_known_similarity=0.96)
    # factors: outcome 0.2, feedback 0.6, reusability 1.0, complexity 0.3, novelty 0.04
    only_outcome = ScoreWeights(
        outcome=1.0, feedback=0.0, reusability=0.0, complexity=0.0, novelty=0.0
    )
    assert score(i, lookups, only_outcome).score == 0.2
    equal = ScoreWeights(outcome=0.2, feedback=0.2, reusability=0.2, complexity=0.2, novelty=0.2)
    # 0.2 · (0.2 + 0.6 + 1.0 + 0.3 + 0.04) = 0.2 · 2.14 = 0.428
    s = score(i, lookups, equal)
    assert s.score == 0.428
    assert s.weights == equal
    reuse_heavy = ScoreWeights(
        outcome=0.1, feedback=0.1, reusability=0.6, complexity=0.1, novelty=0.1
    )
    # 0.1·0.2 + 0.1·0.6 + 0.6·1.0 + 0.1·0.3 + 0.1·0.04 = 0.02 + 0.06 + 0.6 + 0.03 + 0.004
    assert score(i, lookups, reuse_heavy).score == 0.714
    # The default weights give a different score for the same interaction:
    # 0.4·0.2 + 0.2·0.6 + 0.2·1.0 + 0.1·0.3 + 0.1·0.04 = 0.08 + 0.12 + 0.2 + 0.03 + 0.004
    assert score(i, lookups).score == 0.434


def test_score_stays_within_one_when_weights_sum_a_hair_above_one() -> None:
    # The weights validator allows a sum within 1e-6 of 1; with every factor at 1 the raw sum
    # is 1.0000009, which must not escape [0, 1].
    weights = ScoreWeights(
        outcome=0.4000009, feedback=0.2, reusability=0.2, complexity=0.1, novelty=0.1
    )
    best = interaction(
        user_feedback=1,
        steps=2,
        tools_used=["x"],
        files_modified=list("abcd"),
        response=CODE_AND_EXPLANATION,
    )
    s = score(best, Lookups(similar_earlier=5, max_known_similarity=None), weights)
    assert s.score == 1.0
    assert s.high_value


@pytest.mark.parametrize(
    "weights",
    [
        {"outcome": -0.1, "feedback": 0.3, "reusability": 0.4, "complexity": 0.2, "novelty": 0.2},
        {"outcome": 0.4, "feedback": 0.2, "reusability": 0.2, "complexity": 0.1, "novelty": 0.0},
        {"outcome": 0.5, "feedback": 0.2, "reusability": 0.2, "complexity": 0.1, "novelty": 0.1},
    ],
    ids=["negative", "sum-0.9", "sum-1.1"],
)
def test_invalid_weights_are_rejected(weights: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ScoreWeights(**weights)


# --- threshold -------------------------------------------------------------------------------


def test_score_exactly_at_threshold_is_high_value() -> None:
    # outcome 1.0, feedback 0.5, reusability 0.5 (1 similar), complexity 0, novelty 1.0:
    # 0.4 + 0.1 + 0.1 + 0 + 0.1 = 0.7 (0.7000000000000001 in floating point before rounding)
    i = interaction()
    lookups = Lookups(similar_earlier=1, max_known_similarity=None)
    at = score(i, lookups, threshold=0.7)
    assert at.score == 0.7
    assert at.high_value is True
    above = score(i, lookups, threshold=0.700001)
    assert above.score == 0.7
    assert above.high_value is False
    assert above.threshold == 0.700001


def test_threshold_zero_makes_everything_scored_high_value() -> None:
    worst = interaction(outcome=Outcome.FAILURE, user_feedback=-1)
    assert score(worst, Lookups(0, 1.0), threshold=0.0).high_value is True


@pytest.mark.parametrize("threshold", [-0.01, 1.01, float("nan")])
def test_threshold_out_of_range_is_rejected(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        score(interaction(), Lookups(0, None), threshold=threshold)


# --- lifecycle -------------------------------------------------------------------------------


def test_lifecycle_interaction_gets_a_null_score() -> None:
    i = normalize(parse_event("ralph", event("ralph", "iteration_started", event_id="r-1")))
    assert not i.scorable
    s = score(i, Lookups(similar_earlier=10, max_known_similarity=None), threshold=0.0)
    assert s.score is None
    assert s.factors is None
    assert s.high_value is False
    assert s.inputs == {}
    assert s.scorer_version == SCORER_VERSION
    assert s.interaction == i
    assert s.event_id == "r-1"


def test_scorable_flag_decides_not_the_fields() -> None:
    # The same fields with scorable=False are not scored.
    s = score(interaction(scorable=False, user_feedback=1), Lookups(5, None), threshold=0.0)
    assert (s.score, s.high_value) == (None, False)


# --- inputs ----------------------------------------------------------------------------------


def test_inputs_record_what_each_factor_was_computed_from() -> None:
    i = interaction(
        iterations=4,
        copied_to_clipboard=True,
        steps=2,
        tools_used=["a", "b"],
        files_modified=["x.py"],
        response="plain short text",
    )
    s = score(i, Lookups(similar_earlier=3, max_known_similarity=0.93, embedded=True))
    assert s.inputs == {
        "outcome": {"outcome": "success", "iterations": 4, "iterations_counted": 4},
        "feedback": {
            "user_feedback": None,
            "copied_to_clipboard": True,
            "modified_response": False,
        },
        "reusability": {
            "similar_earlier": 3,
            "min_cosine": 0.85,
            "top_k": 10,
            "embedded": True,
            "late": False,
            "forced": False,
            "horizon_s": None,
        },
        "complexity": {
            "steps": 2,
            "tools_used": 2,
            "files_modified": 1,
            "response_has_code": False,
            "response_has_explanation": False,
        },
        "novelty": {
            "max_similarity": 0.93,
            "among": "earlier high-value interactions",
            "min_cosine": 0.90,
            "top_k": 5,
            "embedded": True,
            "late": False,
            "forced": False,
            "horizon_s": None,
        },
    }


def test_watermark_flags_are_recorded_in_both_lookup_factors() -> None:
    lookups = Lookups(2, None, late=True, forced=True, horizon_s=1.0)
    s = score(interaction(), lookups)
    for name in ("reusability", "novelty"):
        assert s.inputs[name]["late"] is True
        assert s.inputs[name]["forced"] is True
        assert s.inputs[name]["horizon_s"] == 1.0
    # The flags say how the look-ups went; they change no factor.
    plain = score(interaction(), Lookups(2, None))
    assert s.factors == plain.factors and s.score == plain.score


def test_not_embedded_is_recorded() -> None:
    s = score(interaction(query=None), Lookups(0, None, embedded=False))
    assert s.inputs["reusability"]["embedded"] is False
    assert s.inputs["novelty"]["embedded"] is False


def test_lookups_are_frozen() -> None:
    lookups = Lookups(1, 0.95)
    assert lookups.embedded is True
    assert (lookups.late, lookups.forced, lookups.horizon_s) == (False, False, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lookups.similar_earlier = 2  # type: ignore[misc]


# --- determinism -----------------------------------------------------------------------------


def test_scoring_is_deterministic() -> None:
    raw = event(
        "ralph",
        "task_completed",
        event_id="r-7",
        user_feedback=1,
        context={"files_modified": list("abcde"), "tools_used": ["pytest"], "steps": 3},
    )
    lookups = Lookups(similar_earlier=2, max_known_similarity=0.97)
    first = score_interaction(
        normalize(parse_event("ralph", raw)), lookups, weights=DEFAULT, threshold=0.7
    )
    second = score_interaction(
        normalize(parse_event("ralph", raw)),
        lookups,
        weights=DEFAULT,
        threshold=0.7,
        scored_at=first.scored_at + timedelta(hours=1),
    )
    assert first.model_dump(exclude={"scored_at"}) == second.model_dump(exclude={"scored_at"})
    assert first.model_dump_json(exclude={"scored_at"}) == second.model_dump_json(
        exclude={"scored_at"}
    )
    same_time = score_interaction(
        normalize(parse_event("ralph", raw)),
        lookups,
        weights=DEFAULT,
        threshold=0.7,
        scored_at=first.scored_at,
    )
    assert same_time == first


def test_default_scored_at_is_now_in_utc() -> None:
    before = datetime.now(UTC)
    s = score_interaction(interaction(), Lookups(0, None), weights=DEFAULT, threshold=0.7)
    assert s.scored_at.tzinfo is not None
    assert before <= s.scored_at <= datetime.now(UTC)


def test_scored_interaction_round_trips_through_json() -> None:
    s = score(interaction(user_feedback=1, response=CODE_AND_EXPLANATION), Lookups(5, 0.91))
    assert ScoredInteraction.model_validate_json(s.model_dump_json()) == s
