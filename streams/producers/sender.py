"""Publishing JSONL from a file or stdin: `learnstream produce send` and `learnstream backfill`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from schemas.base import Source
from schemas.errors import EventError
from schemas.parsing import parse_event
from streams.producers.ids import derive_event_id, file_identity
from streams.producers.sdk import TelemetryProducer


@dataclass
class SendReport:
    """What a send did: events sent, invalid lines dead-lettered, and by event type."""

    sent: int = 0
    invalid: int = 0
    blank: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of the first `MAX_PROBLEMS` invalid lines."""


MAX_PROBLEMS = 20


def problem_lines(report: SendReport, source: str, origin: str) -> list[str]:
    """One line per invalid event (source, file and line, reason), capped with a count."""
    out = [f"{source}: {origin} line {n}: {reason}" for n, reason in report.problems]
    if report.invalid > len(report.problems):
        out.append(f"{source}: ... and {report.invalid - len(report.problems)} more invalid lines")
    return out


def read_lines(stream: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line without newline) for every line of a binary stream."""
    offset = 0
    for number, line in enumerate(stream, start=1):
        yield number, offset, line.rstrip(b"\r\n")
        offset += len(line)


def send_lines(
    producer: TelemetryProducer,
    source: Source,
    lines: Iterable[tuple[int, int, bytes]],
    *,
    origin: str,
    deterministic_ids: bool,
    max_bytes: int,
    max_depth: int = 64,
    stage: str = "send",
) -> SendReport:
    """Validate and emit every line; invalid ones go to the DLQ with reason and line number.

    With ``deterministic_ids`` the ids derive from the file's first line and each line's byte
    offset, exactly as the tailer derives them, so a re-send or backfill never duplicates.
    """
    report = SendReport()
    identity: str | None = None
    for number, offset, line in lines:
        if identity is None:
            identity = file_identity(line) if deterministic_ids else uuid.uuid4().hex
        if not line.strip():
            report.blank += 1
            continue
        try:
            event = parse_event(source, line, max_bytes=max_bytes, max_depth=max_depth)
        except EventError as exc:
            producer.dead_letter(
                line,
                f"{origin} line {number}: {exc.reason}",
                source=source,
                stage=stage,
                file=origin,
                line_number=number,
                event_type=exc.event_type,
                error_kind=exc.kind,
            )
            report.invalid += 1
            if len(report.problems) < MAX_PROBLEMS:
                report.problems.append((number, exc.reason))
            continue
        if event.event_id is None:
            event_id = (
                derive_event_id(source.value, identity, offset)
                if deterministic_ids
                else str(uuid.uuid4())
            )
            event = event.model_copy(update={"event_id": event_id})
        producer.emit(event)
        report.sent += 1
        report.by_type[event.event_type] = report.by_type.get(event.event_type, 0) + 1
    return report
