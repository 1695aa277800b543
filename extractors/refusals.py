"""The refusals log: every candidate the substance gate refused and every example the balance
skipped, one `Refusal` per line, next to the dataset (``dataset.refusals.jsonl`` beside
``dataset.jsonl``; for any dataset path, ``<stem>.refusals.jsonl`` in its folder).

Nothing is dropped silently: the log is there to review the gate's decisions and tune its rules
(``learnstream dataset stats`` counts them by reason). Excerpts come from the redacted
candidate, like the dataset. One line per (event, kind): a redelivered candidate is not logged
or counted twice. Lines are single ``O_APPEND`` writes under ``flock``; a torn last line is
ignored on reading and completed on the next open.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.interaction import ScoredInteraction
from schemas.pattern import Refusal, RefusalReason

log = logging.getLogger("learnstream.extract.refusals")

EXCERPT_CHARS = 300


def refusals_path_for(dataset: Path) -> Path:
    """The default refusals log of a dataset: ``<name>.refusals.jsonl`` in its folder."""
    return dataset.with_name(f"{dataset.stem}.refusals.jsonl")


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """Whitespace-collapsed, at most ``limit`` characters (an ellipsis marks a cut)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def refusal_of(
    candidate: ScoredInteraction,
    *,
    kind: str,
    reason: RefusalReason,
    detail: str,
    decided_by: str,
    measures: dict[str, float] | None = None,
    pattern_id: str | None = None,
) -> Refusal:
    """The log record of a (redacted) candidate that was refused or whose example was skipped."""
    i = candidate.interaction
    return Refusal.model_validate(
        {
            "kind": kind,
            "reason": reason,
            "detail": detail,
            "decided_by": decided_by,
            "event_id": i.event_id,
            "source": i.source.value,
            "event_type": i.event_type,
            "value_score": candidate.score,
            "pattern_id": pattern_id,
            "query_excerpt": excerpt(i.query),
            "response_excerpt": excerpt(i.response),
            "measures": measures or {},
            "timestamp": i.timestamp,
        }
    )


def _key(event_id: str, kind: str) -> str:
    return f"{kind}\x00{event_id}"


class RefusalLog:
    """Appends `Refusal` records, once per (event id, kind); thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, str]] = {}  # key -> (reason, detail)
        self._loaded = False

    def _load(self) -> None:
        self._seen.clear()
        if self.path.exists():
            with self.path.open("rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        data = json.loads(raw)
                        self._seen[_key(str(data["event_id"]), str(data["kind"]))] = (
                            str(data["reason"]),
                            str(data.get("detail") or ""),
                        )
                    except (ValueError, KeyError, TypeError):
                        continue
        self._loaded = True

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        return self.decision(str(item[0]), str(item[1])) is not None

    def decision(self, event_id: str, kind: str) -> tuple[str, str] | None:
        """(reason, detail) of the earlier refusal of this (event, kind), if one was logged."""
        with self._lock:
            if not self._loaded:
                self._load()
            return self._seen.get(_key(event_id, kind))

    def append(self, refusals: Sequence[Refusal]) -> list[bool]:
        """Write the records not logged before; per record, whether it was written."""
        written: list[bool] = []
        if not refusals:
            return written
        with self._lock:
            if not self._loaded:
                self._load()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size:
                    with self.path.open("rb") as fh:
                        fh.seek(size - 1)
                        if fh.read(1) != b"\n":  # a torn last line: end it
                            os.write(fd, b"\n")
                for refusal in refusals:
                    key = _key(refusal.event_id, refusal.kind)
                    if key in self._seen:
                        written.append(False)
                        continue
                    line = refusal.model_dump_json().encode("utf-8") + b"\n"
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    self._seen[key] = (refusal.reason, refusal.detail)
                    written.append(True)
                if any(written):
                    os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return written


@dataclass
class RefusalStats:
    """What a refusals log holds."""

    path: str
    refused: int = 0
    """Candidates the gate refused (no pattern, no example)."""
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    refused_by_source: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    """Examples the balance skipped (their patterns were learned)."""
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


def refusal_stats(path: Path) -> RefusalStats:
    """Counts of a refusals log by kind, reason and source (unreadable lines are skipped)."""
    path = Path(path)
    out = RefusalStats(path=str(path))
    if not path.exists():
        return out
    reasons: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    skips: Counter[str] = Counter()
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                data = json.loads(raw)
                kind, reason = str(data["kind"]), str(data["reason"])
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "pattern":
                out.refused += 1
                reasons[reason] += 1
                sources[str(data.get("source"))] += 1
            else:
                out.skipped += 1
                skips[reason] += 1
    out.refused_by_reason = dict(reasons.most_common())
    out.refused_by_source = dict(sources.most_common())
    out.skipped_by_reason = dict(skips.most_common())
    return out
