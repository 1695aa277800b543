"""The five factors of the value score as pure functions (docs/architecture.md, "The value score").

Each factor returns ``(value, inputs)``: the value in [0, 1] and a dict of exactly what it was
computed from, which `scorers.score.score_interaction` records in the `ScoredInteraction`.
The vector look-ups behind reusability and novelty happen elsewhere; those two factors take
the look-ups' results.

`has_code` and `has_explanation` are the text heuristics behind the complexity factor's
"response has both code and explanation" component.
"""

from __future__ import annotations

import math
import re
from typing import Any

from schemas.interaction import Interaction, Outcome

__all__ = [
    "MIN_EXPLANATION_WORDS",
    "FactorResult",
    "complexity_factor",
    "feedback_factor",
    "has_code",
    "has_explanation",
    "novelty_factor",
    "outcome_factor",
    "reusability_factor",
]

FactorResult = tuple[float, dict[str, Any]]

# --- outcome ---------------------------------------------------------------------------------


def outcome_factor(i: Interaction) -> FactorResult:
    """How the interaction ended.

    Success in <= 3 iterations → 1.0, in <= 5 → 0.8, in more → 0.6; partial success → 0.4;
    failure → 0.2; unknown → 0.4. Missing iterations count as 1.
    """
    counted = 1 if i.iterations is None else i.iterations
    if i.outcome is Outcome.SUCCESS:
        if counted <= 3:
            value = 1.0
        elif counted <= 5:
            value = 0.8
        else:
            value = 0.6
    elif i.outcome is Outcome.PARTIAL:
        value = 0.4
    elif i.outcome is Outcome.FAILURE:
        value = 0.2
    else:
        value = 0.4
    return value, {
        "outcome": i.outcome.value,
        "iterations": i.iterations,
        "iterations_counted": counted,
    }


# --- feedback --------------------------------------------------------------------------------


def feedback_factor(i: Interaction) -> FactorResult:
    """What the user did with the response.

    Explicit thumbs up (+1) → 1.0, thumbs down (-1) → 0.0. Without explicit feedback (``None``
    or 0): copied to clipboard → 0.8, else modified response → 0.6, else no signal → 0.5.
    """
    if i.user_feedback == 1:
        value = 1.0
    elif i.user_feedback == -1:
        value = 0.0
    elif i.copied_to_clipboard:
        value = 0.8
    elif i.modified_response:
        value = 0.6
    else:
        value = 0.5
    return value, {
        "user_feedback": i.user_feedback,
        "copied_to_clipboard": i.copied_to_clipboard,
        "modified_response": i.modified_response,
    }


# --- reusability -----------------------------------------------------------------------------


def reusability_factor(similar_earlier: int) -> FactorResult:
    """How often similar queries came before.

    ``similar_earlier`` is the number of earlier interactions whose query is similar (the
    look-up's parameters are in `scorers.score`): >= 5 → 1.0; >= 3 → 0.7; >= 1 → 0.5; 0 → 0.3.
    """
    if similar_earlier < 0:
        raise ValueError(f"similar_earlier must be >= 0, got {similar_earlier}")
    if similar_earlier >= 5:
        value = 1.0
    elif similar_earlier >= 3:
        value = 0.7
    elif similar_earlier >= 1:
        value = 0.5
    else:
        value = 0.3
    return value, {"similar_earlier": similar_earlier}


# --- complexity ------------------------------------------------------------------------------

MIN_EXPLANATION_WORDS = 8
"""Natural-language words outside code that make a text count as having an explanation."""

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# A line that starts like a statement, a shell command, a decorator, a comment or a tag.
_CODE_START = re.compile(
    r"^(?:(?:def|class|import|return|yield|raise|lambda|const|let|var|fn|func|function"
    r"|sudo|echo|export)\s|from\s+[\w.]+\s+import\s|#include|#!|@\w|\$\s|>>>\s|//|/\*|<[A-Za-z/])"
)
# A block header such as "if x:", "else:", "for k in d:", "def f():".
_BLOCK_HEADER = re.compile(
    r"^(?:if|elif|else|for|while|try|except|finally|with|def|class|async)\b.*:$"
)
# Operators that prose does not use.
_OPERATOR = re.compile(r"=|->|::|&&|\|\|")
# A dotted call anywhere (os.path.join(), or a line ending in a call: print(x); foo(1, 2),
_CALL = re.compile(r"\w\.\w+\(|[A-Za-z_][\w.]*\([^()]*\)\s*[;:,]?$")
_CODE_END = ("{", "}", "[", "(", ";")
_WORD = re.compile(r"^[A-Za-z]+(?:['\u2019-][A-Za-z]+)*$")
_WORD_STRIP = ".,;:!?\"'()[]*"


def _looks_like_code(line: str) -> bool:
    """Whether one line (inline code spans already removed) reads as code rather than prose."""
    text = line.strip()
    if not text:
        return False
    return bool(
        _CODE_START.match(text)
        or _BLOCK_HEADER.match(text)
        or _OPERATOR.search(text)
        or _CALL.search(text)
        or text.endswith(_CODE_END)
    )


def _is_indented(line: str) -> bool:
    return line.startswith(("    ", "\t"))


def _split_fenced(text: str) -> tuple[list[str], list[str]]:
    """The lines inside fenced blocks, and the lines outside them (fence lines in neither).

    A fence is a line starting with three or more backticks or tildes (indentation allowed);
    it closes at a line starting with at least as many of the same character, or at the end.
    """
    inside: list[str] = []
    outside: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
            else:
                outside.append(line)
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        else:
            inside.append(line)
    return inside, outside


def has_code(text: str | None) -> bool:
    """Whether ``text`` contains code.

    Code is a fenced block (```` ``` ```` or ``~~~``, closed or running to the end) with at
    least one non-blank line, or a line outside fences indented by four spaces or a tab that
    looks like code: it starts like a statement or command (``def``, ``import``, ``const``,
    ``sudo``, ``$``, ``@decorator``, ``//`` …), is a block header (``if x:``), uses an
    operator prose does not (``=``, ``->``, ``::``, ``&&``, ``||``), makes a dotted call or
    ends in a call, or ends with ``{ } [ ( ;``. Indented prose (say, a list item's
    continuation) is not code. Inline code spans (single backticks) do not count.
    """
    if not text:
        return False
    inside, outside = _split_fenced(text)
    if any(line.strip() for line in inside):
        return True
    return any(
        _is_indented(line) and _looks_like_code(_INLINE_CODE.sub("", line)) for line in outside
    )


def _prose_words(line: str) -> int:
    words = 0
    for token in line.split():
        if _WORD.match(token.strip(_WORD_STRIP)):
            words += 1
    return words


def has_explanation(text: str | None) -> bool:
    """Whether ``text`` explains something in natural language, outside its code.

    Counts natural-language words (letters, with inner apostrophes or hyphens) on the lines
    outside fenced blocks that do not look like code (by the same test as `has_code`, indented
    or not, after removing inline code spans, which are not counted). At least
    `MIN_EXPLANATION_WORDS` (8) such words make an explanation; a bare code completion or a
    one-line caption such as "Here is the fix:" does not.
    """
    if not text:
        return False
    _, outside = _split_fenced(text)
    words = 0
    for line in outside:
        prose = _INLINE_CODE.sub("", line)
        if _looks_like_code(prose):
            continue
        words += _prose_words(prose)
        if words >= MIN_EXPLANATION_WORDS:
            return True
    return False


def complexity_factor(i: Interaction) -> FactorResult:
    """How much work the interaction involved.

    Sum of 0.3 if more than one step (``steps > 1``), 0.2 if any tool was used, 0.3 if more
    than three files were modified, 0.2 if the response has both code (`has_code`) and an
    explanation (`has_explanation`); capped at 1.
    """
    steps = i.steps or 0
    tools = len(i.tools_used)
    files = len(i.files_modified)
    code = has_code(i.response)
    explanation = has_explanation(i.response)
    value = 0.0
    if steps > 1:
        value += 0.3
    if tools > 0:
        value += 0.2
    if files > 3:
        value += 0.3
    if code and explanation:
        value += 0.2
    return round(min(value, 1.0), 6), {
        "steps": i.steps,
        "tools_used": tools,
        "files_modified": files,
        "response_has_code": code,
        "response_has_explanation": explanation,
    }


# --- novelty ---------------------------------------------------------------------------------


def novelty_factor(max_similarity: float | None) -> FactorResult:
    """How unlike the knowledge already being learned the interaction is.

    ``max_similarity`` is the highest cosine similarity among the earlier high-value
    interactions found by the novelty look-up (those sent to extraction; only at or above its
    threshold, visible to the event; the look-up rounds cosines to 4 decimals), or ``None``
    when it found none: ``None`` → 1.0; else 1 - ``max_similarity``, clamped to [0, 1] and
    rounded to 6 decimals (so 1 - 0.9123 is 0.0877, not 0.08770000000000006).
    """
    if max_similarity is None:
        return 1.0, {"max_similarity": None}
    if not math.isfinite(max_similarity):
        raise ValueError(f"max_similarity must be a finite number, got {max_similarity}")
    value = round(min(1.0, max(0.0, 1.0 - max_similarity)), 6)
    return value, {"max_similarity": max_similarity}
