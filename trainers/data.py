"""The training data of one run: snapshot, deduplication and a leak-free train/eval split.

* Snapshot: the JSONL dataset is copied into the run folder (a trailing partial line, which a
  concurrent writer may be appending, is cut off) and identified by the sha256 of the copy.
* Deduplication: examples with the same messages (canonical JSON) are kept once.
* Split: examples are grouped by their source query (the first user message, lowercased with
  whitespace collapsed), and each group goes to train or eval as a whole, by a hash of
  ``seed`` and the query. A query's examples never land on both sides, the same seed always
  gives the same split, and when the dataset grows every existing query stays on its side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from schemas.pattern import DatasetExample

log = logging.getLogger("learnstream.trainers.data")

Messages = list[dict[str, str]]
"""One conversation in OpenAI chat format: ``[{"role": ..., "content": ...}, ...]``."""

SNAPSHOT_NAME = "dataset.jsonl"
_HASH_CHUNK = 1 << 20
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    """One deduplicated dataset example."""

    messages: Messages
    pattern_id: str
    event_id: str
    query: str
    """The normalized source query: the group the split keeps together."""
    content_hash: str
    """sha256 of the canonical JSON of ``messages``: the deduplication key."""


@dataclass(frozen=True)
class Snapshot:
    """A frozen copy of the dataset for one run."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Lineage:
    """What a candidate was trained and evaluated on; stored as the version's lineage.json."""

    dataset_hash: str
    dataset_path: str
    lines: int
    invalid_lines: int
    duplicates: int
    train_examples: int
    eval_examples: int
    train_queries: int
    eval_queries: int
    eval_fraction: float
    seed: int
    pattern_ids: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    eval_event_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class PreparedData:
    """The outcome of `prepare_dataset`: both splits and their lineage."""

    snapshot: Snapshot
    train: list[Example]
    eval: list[Example]
    lineage: Lineage


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot_dataset(source: Path, run_dir: Path) -> Snapshot:
    """Copy ``source`` to ``run_dir/dataset.jsonl`` (whole lines only) and hash the copy.

    Raises FileNotFoundError when the dataset does not exist.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / SNAPSHOT_NAME
    shutil.copyfile(source, target)
    size = target.stat().st_size
    if size:
        with target.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                # A writer may be mid-append: a last line without newline that is not valid
                # JSON is cut off (it will be complete in the next snapshot).
                data = target.read_bytes()
                keep = data.rfind(b"\n") + 1
                try:
                    json.loads(data[keep:])
                except ValueError:
                    fh.truncate(keep)
                    size = keep
                    log.info("snapshot: cut a partial last line (%d bytes)", len(data) - keep)
    return Snapshot(path=target, sha256=sha256_file(target), size_bytes=size)


def normalize_query(text: str) -> str:
    """The grouping key of a query: lowercased, whitespace collapsed, stripped."""
    return _SPACE.sub(" ", text).strip().lower()


def source_query(messages: Sequence[dict[str, str]]) -> str:
    """The normalized first user message (the whole conversation if it has none)."""
    for message in messages:
        if message.get("role") == "user":
            return normalize_query(message.get("content", ""))
    return normalize_query(json.dumps(list(messages), sort_keys=True))


def content_hash(messages: Sequence[dict[str, str]]) -> str:
    """sha256 of the canonical JSON of the messages (role and content only)."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_examples(path: Path) -> tuple[list[Example], int, int]:
    """Parse a JSONL dataset: (valid examples in file order, lines read, invalid lines).

    Blank lines are ignored; lines that are not a valid `DatasetExample` are counted and
    skipped (logged once per run with the first line number).
    """
    examples: list[Example] = []
    lines = invalid = 0
    first_bad: tuple[int, str] | None = None
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                record = DatasetExample.model_validate_json(line)
            except ValidationError as exc:
                invalid += 1
                if first_bad is None:
                    first_bad = (number, str(exc.errors(include_url=False)[0]["msg"]))
                continue
            messages = [{"role": m.role, "content": m.content} for m in record.messages]
            examples.append(
                Example(
                    messages=messages,
                    pattern_id=record.metadata.pattern_id,
                    event_id=record.metadata.event_id,
                    query=source_query(messages),
                    content_hash=content_hash(messages),
                )
            )
    if first_bad is not None:
        log.warning(
            "dataset %s: skipped %d invalid line(s); first at line %d: %s",
            path,
            invalid,
            *first_bad,
        )
    return examples, lines, invalid


def deduplicate(examples: Iterable[Example]) -> tuple[list[Example], int]:
    """Keep the first example of each content hash: (kept, number dropped)."""
    seen: set[str] = set()
    kept: list[Example] = []
    dropped = 0
    for example in examples:
        if example.content_hash in seen:
            dropped += 1
            continue
        seen.add(example.content_hash)
        kept.append(example)
    return kept, dropped


def assign_split(query: str, eval_fraction: float, seed: int) -> Literal["train", "eval"]:
    """Which side a source query goes to: a pure function of (seed, query)."""
    digest = hashlib.sha256(f"{seed}\x00{query}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if position < eval_fraction else "train"


def split_examples(
    examples: Sequence[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (train, eval) by source query; order within each side is kept."""
    train: list[Example] = []
    held_out: list[Example] = []
    for example in examples:
        side = assign_split(example.query, eval_fraction, seed)
        (held_out if side == "eval" else train).append(example)
    return train, held_out


def prepare_dataset(
    source: Path, run_dir: Path, *, eval_fraction: float, seed: int
) -> PreparedData:
    """Snapshot ``source`` into ``run_dir``, deduplicate and split it; with lineage."""
    snapshot = snapshot_dataset(source, run_dir)
    examples, lines, invalid = load_examples(snapshot.path)
    unique, duplicates = deduplicate(examples)
    train, held_out = split_examples(unique, eval_fraction, seed)
    lineage = Lineage(
        dataset_hash=snapshot.sha256,
        dataset_path=str(source),
        lines=lines,
        invalid_lines=invalid,
        duplicates=duplicates,
        train_examples=len(train),
        eval_examples=len(held_out),
        train_queries=len({e.query for e in train}),
        eval_queries=len({e.query for e in held_out}),
        eval_fraction=eval_fraction,
        seed=seed,
        pattern_ids=sorted({e.pattern_id for e in unique}),
        event_ids=sorted({e.event_id for e in unique}),
        eval_event_ids=sorted({e.event_id for e in held_out}),
    )
    return PreparedData(snapshot=snapshot, train=train, eval=held_out, lineage=lineage)
