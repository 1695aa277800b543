"""The JSONL fine-tuning dataset: OpenAI chat-format examples, one per line.

Each line is ``{"messages": [system, user, assistant], "metadata": {...}}`` (`DatasetExample`),
loadable with ``datasets.load_dataset("json", data_files=...)`` and usable as a conversational
dataset by trl's SFTTrainer. Metadata keys always have the same JSON types.

`DatasetWriter` guarantees:

- no duplicates: an example whose messages hash (sha256 of the canonical JSON of roles and
  contents) is already in the file is skipped; the index is rebuilt by scanning the file on open,
  and the tail another process appended is scanned before each batch (under ``flock``);
- no torn lines: each line is one ``os.write`` on an ``O_APPEND`` descriptor, and a trailing
  fragment without a newline (a crash mid-write) is truncated away, with a warning, on open;
- durability: ``fsync`` after each batch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from extractors.metrics import ExtractMetrics
from extractors.refusals import refusal_stats, refusals_path_for
from schemas.interaction import ScoredInteraction
from schemas.pattern import ChatMessage, DatasetExample, DatasetMetadata, Pattern

log = logging.getLogger("learnstream.extract.dataset")

_READ_CHUNK = 1 << 20


def content_hash(messages: Sequence[ChatMessage | dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the messages' roles and contents: an example's identity."""
    items = [
        {"role": m.role, "content": m.content}
        if isinstance(m, ChatMessage)
        else {"role": m.get("role"), "content": m.get("content")}
        for m in messages
    ]
    canonical = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def build_example(
    candidate: ScoredInteraction,
    pattern: Pattern,
    *,
    system_prompt: str,
    pattern_id: str | None = None,
) -> DatasetExample | None:
    """The dataset example of a (redacted) candidate; None without a query or a response.

    system = ``system_prompt``, user = the query, assistant = the response. The messages depend
    only on the candidate (not on what an LLM made of it), so a redelivered event yields the
    same content hash and is skipped.
    ``pattern_id`` is the stored pattern's id (after a merge), default ``pattern.pattern_id``.
    """
    i = candidate.interaction
    user = (i.query or "").strip()
    assistant = (i.response or "").strip()
    if not user or not assistant:
        return None
    messages = [
        ChatMessage(role="system", content=system_prompt),
        ChatMessage(role="user", content=user),
        ChatMessage(role="assistant", content=assistant),
    ]
    metadata = DatasetMetadata(
        pattern_id=pattern_id or pattern.pattern_id,
        event_id=i.event_id,
        value_score=candidate.score,
        source=i.source.value,
        tags=list(pattern.tags),
        timestamp=i.timestamp,
        extractor=pattern.extractor,
        content_hash=content_hash(messages),
    )
    return DatasetExample(messages=messages, metadata=metadata)


def example_line(example: DatasetExample) -> bytes:
    """One JSONL line (UTF-8, newline-terminated)."""
    data = example.model_dump(mode="json")
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _iter_lines(path: Path, offset: int = 0) -> Iterator[tuple[int, bytes, bool]]:
    """(start offset, line bytes without newline, complete?) for each line from ``offset``."""
    with path.open("rb") as f:
        f.seek(offset)
        pos = offset
        pending = b""
        while chunk := f.read(_READ_CHUNK):
            pending += chunk
            start = 0
            while (nl := pending.find(b"\n", start)) >= 0:
                yield pos, pending[start:nl], True
                pos += nl - start + 1
                start = nl + 1
            pending = pending[start:]
        if pending:
            yield pos, pending, False


def _line_hash(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
        messages = data["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return None
        return content_hash(messages)
    except (ValueError, KeyError, TypeError):
        return None


class DatasetWriter:
    """Appends examples to the JSONL dataset without duplicates or torn lines; thread-safe."""

    def __init__(
        self, path: Path, metrics: ExtractMetrics | None = None, *, fsync: bool = True
    ) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.fsync = fsync
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._hashes: set[str] = set()
        self._lines = 0
        self._end = 0

    def __enter__(self) -> DatasetWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lines(self) -> int:
        """Complete lines in the file (as of the last open or append)."""
        return self._lines

    @property
    def size(self) -> int:
        """Bytes in the file (as of the last open or append)."""
        return self._end

    def __contains__(self, digest: object) -> bool:
        return digest in self._hashes

    def open(self) -> None:
        """Open for appending: repair a torn tail, index the existing examples."""
        with self._lock:
            if self._fd is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._hashes.clear()
                self._lines = 0
                self._end = 0
                self._catch_up()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._gauges()

    def close(self) -> None:
        """Close the file (appends are already fsynced)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _catch_up(self) -> None:
        """Repair a torn tail and index lines past ``_end`` (needs the flock)."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self._end:  # truncated behind our back: index from scratch
            self._hashes.clear()
            self._lines = 0
            self._end = 0
        if size == self._end:
            return
        last_complete = self._end
        for start, raw, complete in _iter_lines(self.path, self._end):
            if not complete:
                log.warning(
                    "dataset %s: truncating a torn trailing line (%d bytes at offset %d)",
                    self.path,
                    len(raw),
                    start,
                )
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
                if self.metrics is not None:
                    self.metrics.dataset_torn_repairs.inc()
                break
            last_complete = start + len(raw) + 1
            self._lines += 1
            digest = _line_hash(raw)
            if digest is None:
                log.warning("dataset %s: unreadable line at offset %d", self.path, start)
            else:
                self._hashes.add(digest)
        self._end = last_complete

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.dataset_lines.set(self._lines)
            self.metrics.dataset_bytes.set(self._end)

    def append(self, examples: Sequence[DatasetExample]) -> list[bool]:
        """Append the examples not already present; one fsync per call.

        Returns, per example, whether it was written (False: a duplicate, skipped).
        """
        if self._fd is None:
            self.open()
        written: list[bool] = []
        with self._lock:
            fd = self._fd
            assert fd is not None
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
                for example in examples:
                    digest = content_hash(example.messages)
                    if digest in self._hashes:
                        written.append(False)
                        if self.metrics is not None:
                            self.metrics.dataset_duplicates.inc()
                        continue
                    data = example_line(example)
                    view = memoryview(data)
                    while view:  # one write for a regular file; loop only on a short write
                        n = os.write(fd, view)
                        view = view[n:]
                    self._hashes.add(digest)
                    self._lines += 1
                    self._end += len(data)
                    written.append(True)
                if any(written):
                    if self.fsync:
                        os.fsync(fd)
                    if self.metrics is not None:
                        self.metrics.dataset_written.inc(sum(written))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._gauges()
        return written


# Inspection


@dataclass
class DatasetStats:
    """What a dataset file holds."""

    path: str
    lines: int = 0
    bytes: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    torn_tail: bool = False
    by_source: dict[str, int] = field(default_factory=dict)
    by_tag: dict[str, int] = field(default_factory=dict)
    by_extractor: dict[str, int] = field(default_factory=dict)
    balance: dict[str, Any] = field(default_factory=dict)
    """Examples per pattern: ``patterns``, ``max``, ``mean``, ``top_share`` (the largest
    pattern's share of the examples), ``sources`` (share per source) and ``top`` (the
    ``TOP_PATTERNS`` patterns with the most examples)."""
    refusals: dict[str, Any] = field(default_factory=dict)
    """The refusals log next to the dataset (`extractors.refusals.RefusalStats`): candidates
    the substance gate refused, by reason and source, and examples the balance skipped."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


TOP_PATTERNS = 10


def _balance(patterns: Counter[str], sources: Counter[str]) -> dict[str, Any]:
    total = sum(patterns.values())
    if not total:
        return {"patterns": 0}
    largest = max(patterns.values())
    return {
        "patterns": len(patterns),
        "max": largest,
        "mean": round(total / len(patterns), 3),
        "top_share": round(largest / total, 4),
        "sources": {k: round(v / total, 4) for k, v in sources.most_common()},
        "top": dict(patterns.most_common(TOP_PATTERNS)),
    }


def stats(path: Path) -> DatasetStats:
    """Line and byte counts, examples per source, tag and extractor, duplicates, torn tail,
    the balance per pattern and source, and the refusals logged next to the dataset.
    """
    path = Path(path)
    out = DatasetStats(path=str(path))
    out.refusals = refusal_stats(refusals_path_for(path)).to_dict()
    if not path.exists():
        return out
    out.bytes = path.stat().st_size
    seen: set[str] = set()
    sources: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    extractors: Counter[str] = Counter()
    patterns: Counter[str] = Counter()
    for _, raw, complete in _iter_lines(path):
        if not complete:
            out.torn_tail = True
            break
        out.lines += 1
        try:
            data = json.loads(raw)
            meta = data["metadata"]
            digest = content_hash(data["messages"])
        except (ValueError, KeyError, TypeError, AttributeError):
            out.invalid += 1
            continue
        out.valid += 1
        if digest in seen:
            out.duplicates += 1
        seen.add(digest)
        if isinstance(meta, dict):
            sources[str(meta.get("source"))] += 1
            extractors[str(meta.get("extractor", "unknown"))] += 1
            patterns[str(meta.get("pattern_id"))] += 1
            for tag in meta.get("tags") or []:
                tags[str(tag)] += 1
    out.by_source = dict(sources.most_common())
    out.by_tag = dict(tags.most_common())
    out.by_extractor = dict(extractors.most_common())
    out.balance = _balance(patterns, sources)
    return out


class Tokenizer(Protocol):
    """What `validate` needs of a tokenizer (a transformers or tokenizers one fits)."""

    def encode(self, text: str) -> Any:
        """Token ids (a list, or an object with ``ids``)."""


@dataclass(frozen=True)
class LineError:
    """A problem with one line (1-based)."""

    line: int
    message: str


@dataclass
class ValidationReport:
    """The result of `validate`."""

    path: str
    lines: int = 0
    valid: int = 0
    max_tokens_seen: int | None = None
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No line has a problem."""
        return not self.errors

    def summary(self) -> str:
        """One line per problem, after a count line."""
        head = f"{self.path}: {self.lines} lines, {self.valid} valid, {len(self.errors)} errors"
        return "\n".join([head, *(f"  line {e.line}: {e.message}" for e in self.errors)])


def _token_count(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    if getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "apply_chat_template"):
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    enc = tokenizer.encode(text)
    return len(getattr(enc, "ids", enc))


def _role_errors(roles: list[str]) -> list[str]:
    errors = []
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        errors.append("a system message is allowed only first")
    for n, role in enumerate(body):
        expected = "user" if n % 2 == 0 else "assistant"
        if role not in (expected, "system"):
            errors.append(
                f"message {n + len(roles) - len(body)} is {role!r}, expected {expected!r}"
            )
            break
    if not body or body[-1] != "assistant":
        errors.append("the last message must be the assistant's")
    return errors


def validate(
    path: Path, tokenizer: Tokenizer | None = None, max_tokens: int | None = None
) -> ValidationReport:
    """Check every line: JSON, the `DatasetExample` schema (roles, non-empty contents,
    metadata), role order, duplicates, and token length when a tokenizer is given.
    """
    path = Path(path)
    report = ValidationReport(path=str(path))
    if not path.exists():
        report.errors.append(LineError(0, "file not found"))
        return report
    seen: dict[str, int] = {}
    for n, (_, raw, complete) in enumerate(_iter_lines(path), 1):
        report.lines = n
        if not complete:
            report.errors.append(LineError(n, "torn trailing line (no newline)"))
            break
        try:
            data = json.loads(raw)
        except ValueError as exc:
            report.errors.append(LineError(n, f"not JSON: {exc}"))
            continue
        if not isinstance(data, dict):
            report.errors.append(LineError(n, f"not a JSON object: {type(data).__name__}"))
            continue
        try:
            example = DatasetExample.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                report.errors.append(LineError(n, f"{loc}: {err['msg']}"))
            continue
        problems = _role_errors([m.role for m in example.messages])
        problems += [
            f"message {k} has blank content"
            for k, m in enumerate(example.messages)
            if not m.content.strip()
        ]
        digest = content_hash(example.messages)
        if digest in seen:
            problems.append(f"duplicate of line {seen[digest]}")
        else:
            seen[digest] = n
        if tokenizer is not None:
            count = _token_count(tokenizer, [m.model_dump() for m in example.messages])
            report.max_tokens_seen = max(report.max_tokens_seen or 0, count)
            if max_tokens is not None and count > max_tokens:
                problems.append(f"{count} tokens, more than {max_tokens}")
        report.errors.extend(LineError(n, p) for p in problems)
        if not problems:
            report.valid += 1
    return report
