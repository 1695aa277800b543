"""Validation at the edge: raw bytes or dicts in, a typed source event or an `EventError` out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from schemas.base import Source, SourceEvent
from schemas.errors import EventError, describe_validation_error
from schemas.events import EVENT_MODELS

DEFAULT_MAX_EVENT_BYTES = 1_048_576


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


def validate_event(source: Source | str, data: Any) -> SourceEvent:
    """Validate a decoded event against its source's schema for its event type."""
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
    return validate_event(src, data)
