"""Turning bad input into one clear, human-readable reason."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\u2028\u2029\ud800-\udfff]")
MAX_REASON_CHARS = 2000


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` as one printable line: control characters and surrogates escaped (``\\n``,
    ``\\ud800``), at most ``limit`` characters."""
    flat = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat


class EventError(ValueError):
    """An event that cannot be accepted; ``reason`` says why in one line.

    It is the bad-input signal of every stage: the caller dead-letters the original bytes with
    ``reason``, or answers 422 with it.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        event_type: str | None = None,
        fields: tuple[str, ...] = (),
        kind: str = "invalid",
    ) -> None:
        reason = one_line(reason)
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.event_type = event_type
        self.fields = fields
        self.kind = kind


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(exc: ValidationError) -> tuple[str, tuple[str, ...]]:
    """One line naming every failing field, and the field names."""
    parts = []
    fields = []
    for err in exc.errors(include_url=False):
        where = _loc(err["loc"])
        fields.append(where)
        msg = err["msg"]
        if err["type"] != "missing" and "input" in err:
            msg = f"{msg} (got {_short(err['input'])})"
        parts.append(f"field '{where}': {msg}")
    return "; ".join(parts), tuple(fields)
