"""The five value-score factors: every branch and boundary, and the code/explanation heuristics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import Interaction, Outcome
from scorers.factors import (
    MIN_EXPLANATION_WORDS,
    complexity_factor,
    feedback_factor,
    has_code,
    has_explanation,
    novelty_factor,
    outcome_factor,
    reusability_factor,
)

CODE_AND_EXPLANATION = (
    "Disable DHCP and set the address explicitly, then run `sudo nixos-rebuild switch`.\n\n"
    "```nix\nnetworking.useDHCP = false;\n```"
)


def interaction(**changes: Any) -> Interaction:
    """A scorable interaction with no signals, changed by ``changes``."""
    fields: dict[str, Any] = {
        "event_id": "e-1",
        "source": "ralph",
        "event_type": "task_completed",
        "key": "t1",
        "timestamp": datetime(2026, 11, 2, 9, 14, 5, tzinfo=UTC),
        "scorable": True,
        "outcome": Outcome.SUCCESS,
    }
    fields.update(changes)
    return Interaction(**fields)


# --- outcome ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iterations", "expected"),
    [
        (None, 1.0),  # missing counts as 1
        (0, 1.0),
        (1, 1.0),
        (3, 1.0),
        (4, 0.8),
        (5, 0.8),
        (6, 0.6),
        (25, 0.6),
    ],
)
def test_outcome_success_by_iterations(iterations: int | None, expected: float) -> None:
    value, inputs = outcome_factor(interaction(outcome=Outcome.SUCCESS, iterations=iterations))
    assert value == expected
    assert inputs == {
        "outcome": "success",
        "iterations": iterations,
        "iterations_counted": 1 if iterations is None else iterations,
    }


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [(Outcome.PARTIAL, 0.4), (Outcome.FAILURE, 0.2), (Outcome.UNKNOWN, 0.4)],
)
@pytest.mark.parametrize("iterations", [None, 1, 4, 10])
def test_outcome_other_than_success_ignores_iterations(
    outcome: Outcome, expected: float, iterations: int | None
) -> None:
    value, inputs = outcome_factor(interaction(outcome=outcome, iterations=iterations))
    assert value == expected
    assert inputs["outcome"] == outcome.value


# --- feedback --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_feedback", "copied", "modified", "expected"),
    [
        (1, False, False, 1.0),
        (1, True, True, 1.0),  # explicit feedback wins over implicit signals
        (-1, False, False, 0.0),
        (-1, True, True, 0.0),
        (0, False, False, 0.5),
        (None, False, False, 0.5),
        (0, True, False, 0.8),
        (None, True, False, 0.8),
        (None, True, True, 0.8),  # copied wins over modified
        (0, False, True, 0.6),
        (None, False, True, 0.6),
    ],
)
def test_feedback(user_feedback: int | None, copied: bool, modified: bool, expected: float) -> None:
    value, inputs = feedback_factor(
        interaction(
            user_feedback=user_feedback, copied_to_clipboard=copied, modified_response=modified
        )
    )
    assert value == expected
    assert inputs == {
        "user_feedback": user_feedback,
        "copied_to_clipboard": copied,
        "modified_response": modified,
    }


# --- reusability -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("similar", "expected"),
    [(0, 0.3), (1, 0.5), (2, 0.5), (3, 0.7), (4, 0.7), (5, 1.0), (6, 1.0), (10, 1.0)],
)
def test_reusability(similar: int, expected: float) -> None:
    assert reusability_factor(similar) == (expected, {"similar_earlier": similar})


def test_reusability_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="similar_earlier"):
        reusability_factor(-1)


# --- complexity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 0.0),
        # more than one step
        ({"steps": 2}, 0.3),
        ({"steps": 7}, 0.3),
        ({"steps": 1}, 0.0),
        ({"steps": 0}, 0.0),
        ({"steps": None}, 0.0),
        # tools used
        ({"tools_used": ["pytest"]}, 0.2),
        ({"tools_used": ["pytest", "ruff"]}, 0.2),
        # more than three files
        ({"files_modified": ["a", "b", "c", "d"]}, 0.3),
        ({"files_modified": ["a", "b", "c"]}, 0.0),
        # code and explanation, both needed
        ({"response": CODE_AND_EXPLANATION}, 0.2),
        ({"response": "```python\nx = 1\n```"}, 0.0),
        ({"response": "This explanation has plenty of words but contains no code at all."}, 0.0),
        # combinations
        ({"steps": 3, "tools_used": ["nix"]}, 0.5),
        ({"steps": 3, "files_modified": list("abcd")}, 0.6),
        ({"tools_used": ["nix"], "response": CODE_AND_EXPLANATION}, 0.4),
        ({"steps": 2, "tools_used": ["x"], "files_modified": list("abcd")}, 0.8),
        # everything: 0.3 + 0.2 + 0.3 + 0.2 = 1.0, the cap
        (
            {
                "steps": 9,
                "tools_used": ["x", "y"],
                "files_modified": list("abcdefgh"),
                "response": CODE_AND_EXPLANATION,
            },
            1.0,
        ),
    ],
)
def test_complexity(changes: dict[str, Any], expected: float) -> None:
    value, _ = complexity_factor(interaction(**changes))
    assert value == expected
    assert 0.0 <= value <= 1.0


def test_complexity_records_its_inputs() -> None:
    _, inputs = complexity_factor(
        interaction(
            steps=4,
            tools_used=["pytest", "ruff"],
            files_modified=["a.py", "b.py"],
            response=CODE_AND_EXPLANATION,
        )
    )
    assert inputs == {
        "steps": 4,
        "tools_used": 2,
        "files_modified": 2,
        "response_has_code": True,
        "response_has_explanation": True,
    }


# --- has_code / has_explanation --------------------------------------------------------------

TEXTS: list[tuple[str, str | None, bool, bool]] = [
    ("none", None, False, False),
    ("empty", "", False, False),
    (
        "ralph output: prose and a fenced python block",
        "Added a `fake_consumer` fixture in tests/conftest.py. It patches `app.sink.Consumer`,"
        " serves queued messages from `poll()` and asserts the consumer is closed.\n\n"
        "```python\nimport pytest\n\n\n@pytest.fixture\ndef fake_consumer(monkeypatch):\n"
        "    consumer = MagicMock()\n    yield consumer\n```",
        True,
        True,
    ),
    (
        "short caption before a fence is not an explanation",
        "Here is the fix:\n\n```sql\nSELECT email, count(*) FROM users GROUP BY email;\n```",
        True,
        False,
    ),
    (
        "tilde fence",
        "~~~bash\nsudo nixos-rebuild switch\n~~~",
        True,
        False,
    ),
    (
        "unterminated fence still holds code",
        "Run this once the interface is up and you will see the static address listed:\n"
        "```\nip addr show enp3s0",
        True,
        True,
    ),
    ("empty fence is no code", "```\n```", False, False),
    (
        "prose only",
        "Increase `session.timeout.ms` to 300000 so the broker waits longer before removing"
        " the consumer from the group.",
        False,
        True,
    ),
    (
        "seven words are not enough",
        "Rebuild the system after changing the file.",
        False,
        False,
    ),
    (
        "vscode completion: bare code with indented lines",
        "queue = []\n    consumer = MagicMock()\n"
        "    consumer.poll.side_effect = lambda timeout=1.0: queue.pop(0) if queue else None\n"
        '    monkeypatch.setattr("app.sink.Consumer", lambda conf: consumer)\n'
        "    yield consumer",
        True,
        False,
    ),
    ("one-line bare completion, not indented", "useDHCP = true;", False, False),
    (
        "markdown indented code block after prose",
        "Start the consumer with an explicit group id so offsets are committed per group:\n\n"
        '    consumer = Consumer({"group.id": "sink", "enable.auto.commit": False})\n'
        '    consumer.subscribe(["interactions.scored"])',
        True,
        True,
    ),
    (
        "tab-indented shell command",
        "\tsudo systemctl restart systemd-networkd",
        True,
        False,
    ),
    (
        "indented prose (list continuation) is not code",
        "1. Open the configuration file\n    and look for the networking section near the top\n"
        "2. Save it",
        False,
        True,
    ),
    (
        "rust code lines without a fence",
        "let oldest = self.entries.iter().min_by_key(|e| e.inserted).unwrap();\n"
        "        self.entries.remove(oldest);",
        True,
        False,
    ),
    (
        "test output is neither",
        "pytest: 11 passed in 0.84s",
        False,
        False,
    ),
]


@pytest.mark.parametrize(
    ("text", "code", "explanation"),
    [pytest.param(t, c, e, id=name) for name, t, c, e in TEXTS],
)
def test_has_code_and_has_explanation(text: str | None, code: bool, explanation: bool) -> None:
    assert has_code(text) is code
    assert has_explanation(text) is explanation


def test_explanation_threshold_is_eight_words() -> None:
    assert MIN_EXPLANATION_WORDS == 8
    words = ["word"] * 8
    assert has_explanation(" ".join(words))
    assert not has_explanation(" ".join(words[:7]))
    # Words inside code blocks and inline code spans do not count.
    assert not has_explanation(
        "Seven plain words here before the code:\n```\nthis is all code not words\n```"
    )
    assert not has_explanation("Use `these inline words are not counted at all` now please.")


# --- novelty ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_similarity", "expected"),
    [
        (None, 1.0),
        (0.9, 0.1),
        (0.95, 0.05),
        (0.99, 0.01),
        (1.0, 0.0),
        (1.0000001, 0.0),  # float noise above 1 is clamped
        (-0.5, 1.0),  # clamped to 1
        (0.9123, 0.0877),  # rounded to 6 decimals: exactly the decimal, no float tail
        (0.8765432109, 0.123457),
    ],
)
def test_novelty(max_similarity: float | None, expected: float) -> None:
    value, inputs = novelty_factor(max_similarity)
    assert value == expected
    assert 0.0 <= value <= 1.0
    assert inputs == {"max_similarity": max_similarity}


def test_novelty_rejects_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        novelty_factor(float("nan"))
