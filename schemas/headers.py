"""The headers of every record the pipeline writes: one function for all of them.

Every record carries ``source`` (who wrote it: a tool, or a stage such as ``triggers``),
``event_type``, ``schema_version`` and ``content-type: application/json``; telemetry records
also ``event_id``. Dead letters are ``event_type: dead_letter``, with the source of the event
they hold (empty when unknown).
"""

from __future__ import annotations

from schemas.dlq import DeadLetter

Headers = list[tuple[str, bytes]]
JSON = b"application/json"


def json_headers(
    source: str, event_type: str, schema_version: int, *, event_id: str | None = None
) -> Headers:
    """The headers of a JSON record written by the pipeline."""
    headers = [
        ("source", source.encode()),
        ("event_type", event_type.encode()),
        ("schema_version", str(schema_version).encode()),
        ("content-type", JSON),
    ]
    if event_id is not None:
        headers.append(("event_id", event_id.encode()))
    return headers


def dead_letter_headers(letter: DeadLetter, source: str | None = None) -> Headers:
    """The headers of a ``telemetry.dlq`` record (``source``: else the letter's own)."""
    return json_headers(
        source if source is not None else letter.source or "", "dead_letter", letter.schema_version
    )
