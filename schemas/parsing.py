"""Validation at the edge: raw bytes or dicts in, a typed source event or an `EventError` out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from schemas.base import Source, SourceEvent
from schemas.errors import EventError, describe_validation_error
from schemas.events import EVENT_MODELS

DEFAULT_MAX_EVENT_BYTES = 1_048_576
DEFAULT_MAX_EVENT_DEPTH = 64
# NUL (PostgreSQL's text and jsonb cannot hold it) and UTF-16 surrogates (no UTF-8 encoder
# writes a lone one, so no store, topic or file takes it).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(text: str, where: str, source: str | None, *, key: bool = False) -> EventError:
    found = _UNSTORABLE.search(text)
    code = ord(found.group()) if found else 0
    what = (
        "a NUL character (\\u0000), which the stores cannot hold"
        if code == 0
        else f"a lone surrogate (\\u{code:04x}), which is not Unicode text"
    )
    subject = f"a key of field '{where or '(root)'}'" if key else f"field '{where or '(root)'}'"
    return EventError(
        f"{subject} contains {what}",
        source=source,
        fields=(where,),
        kind="invalid_text",
    )


def _bad_text(text: str) -> bool:
    # ASCII text (most of it) can only hold a NUL; `in` and isascii() run at C speed.
    if text.isascii():
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None


def check_structure(
    data: Any,
    *,
    max_depth: int = DEFAULT_MAX_EVENT_DEPTH,
    source: str | None = None,
    text: bool = True,
) -> None:
    """Raise `EventError` when a decoded event nests objects and arrays deeper than
    ``max_depth``, or (``text``) holds a key or string that no store can keep (NUL, a lone
    surrogate).

    Iterative, so no input can exhaust the stack; every way in calls it (through
    `validate_event`) before pydantic sees the data. ``text=False`` checks the depth only: for
    a caller that checks the text on the serialized JSON instead (the SDK's hot path).
    """
    if isinstance(data, str):
        if text and _UNSTORABLE.search(data):
            raise _unstorable(data, "", source)
        return
    if not isinstance(data, dict | list | tuple):
        return
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > max_depth:
            where = path if len(path) <= 80 else path[:77] + "..."
            raise EventError(
                f"event nests deeper than {max_depth} levels at '{where}' "
                "(LEARNSTREAM_MAX_EVENT_DEPTH)",
                source=source,
                kind="too_deep",
            )
        items = value.items() if type(value) is dict else enumerate(value)
        for key, item in items:
            kind = type(item)
            if text and (
                type(key) is str and ("\x00" in key or not key.isascii()) and _bad_text(key)
            ):
                raise _unstorable(key, path, source, key=True)
            if kind is str:
                if text and ("\x00" in item or not item.isascii()) and _bad_text(item):
                    raise _unstorable(item, f"{path}.{key}" if path else str(key), source)
            elif kind is dict or kind is list or isinstance(item, dict | list | tuple):
                stack.append((item, depth + 1, f"{path}.{key}" if path else str(key)))
            elif text and isinstance(item, str) and _UNSTORABLE.search(item):  # a str subclass
                raise _unstorable(item, f"{path}.{key}" if path else str(key), source)


def parse_source(source: str) -> Source:
    """The `Source` named by ``source``, or an `EventError` listing the valid ones."""
    try:
        return Source(source)
    except ValueError:
        valid = ", ".join(s.value for s in Source)
        raise EventError(
            f"unknown source {source!r}; expected one of: {valid}", kind="source"
        ) from None


def decode_json(
    raw: bytes | str, *, source: str | None = None, max_bytes: int | None = None
) -> Any:
    """Decode one JSON document, with size and syntax errors reported as `EventError`."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if max_bytes is not None and size > max_bytes:
        raise EventError(
            f"event is {size} bytes, over the limit of {max_bytes} bytes "
            "(LEARNSTREAM_MAX_EVENT_BYTES)",
            source=source,
            kind="oversized",
        )
    try:
        # Values are UTF-8 by contract; json.loads would otherwise guess UTF-16/32 from bytes.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise EventError(f"event is not UTF-8: {exc}", source=source, kind="malformed") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            source=source,
            kind="malformed",
        ) from None
    except RecursionError:
        raise EventError(
            "event nests too deeply to decode (LEARNSTREAM_MAX_EVENT_DEPTH)",
            source=source,
            kind="too_deep",
        ) from None


def validate_event(
    source: Source | str, data: Any, *, max_depth: int = DEFAULT_MAX_EVENT_DEPTH
) -> SourceEvent:
    """Validate a decoded event against its source's schema for its event type (after
    `check_structure`: bounded depth, storable text)."""
    src = parse_source(str(source))
    if isinstance(data, SourceEvent):
        if data.SOURCE is not src:
            raise EventError(
                f"a {data.SOURCE.value} event cannot be sent as source {src.value!r}",
                source=src.value,
                kind="source",
            )
        return data
    if not isinstance(data, Mapping):
        raise EventError(
            f"{src.value} event must be a JSON object, got {type(data).__name__}",
            source=src.value,
            kind="malformed",
        )
    check_structure(
        data if isinstance(data, dict) else dict(data), max_depth=max_depth, source=src.value
    )
    event_type = data.get("event_type", data.get("event"))
    models = EVENT_MODELS[src]
    if event_type is None:
        raise EventError(
            f"{src.value} event has no 'event_type' (or 'event') field",
            source=src.value,
            fields=("event_type",),
            kind="invalid",
        )
    model = models.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        raise EventError(
            f"unknown {src.value} event type {event_type!r}; expected one of: "
            + ", ".join(sorted(models)),
            source=src.value,
            event_type=str(event_type),
            fields=("event_type",),
            kind="unknown_type",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail, fields = describe_validation_error(exc)
        raise EventError(
            f"{src.value}.{event_type}: {detail}",
            source=src.value,
            event_type=event_type,
            fields=fields,
            kind="invalid",
        ) from None


def parse_event(
    source: Source | str,
    raw: bytes | str | Mapping[str, Any] | SourceEvent,
    *,
    max_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
    max_depth: int = DEFAULT_MAX_EVENT_DEPTH,
) -> SourceEvent:
    """Parse raw JSON (or an already-decoded dict or model) into the source's event model.

    Raises `EventError` with a one-line reason naming the source, event type and failing fields.
    """
    src = parse_source(str(source))
    data = (
        decode_json(raw, source=src.value, max_bytes=max_bytes)
        if isinstance(raw, bytes | str)
        else raw
    )
    return validate_event(src, data, max_depth=max_depth)
