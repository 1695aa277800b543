"""Dataset balance: no pile of near-identical examples, no pattern drowning the others.

Many paraphrases of one question with the same answer are one lesson, not many. Before an
example is appended to the dataset, `DatasetBalance.admit` checks it against what the dataset
already holds:

- **near-duplicates**: an example whose answer is near-identical to earlier examples' answers
  (estimated Jaccard similarity of word 3-shingles >= ``answer_similarity``, by MinHash with
  LSH banding) *and* whose question is one of theirs in other words (same stored pattern, or
  cosine of the query embeddings >= ``query_similarity``) is skipped once ``max_near_duplicates``
  such examples are in; the same answer to unrelated questions is not a duplicate;
- **per-pattern cap**: a pattern (after merging) gets at most ``max_per_pattern`` examples.

Within a batch the best-scored examples are considered first, so they are the ones kept; across
batches the dataset is append-only and the first ones stay. The extraction stage asks only
about events not decided before: a skip is logged once per event in the refusals log and read
back on a redelivery or replay (`ExtractionStage._balance`), so batches never change a
decision. Skipped examples are reported (reason ``near_duplicate`` or ``pattern_cap``), never
silently dropped; their patterns are still learned. The index is rebuilt from the dataset file
on open (no model needed for that: query vectors are computed lazily, only for examples whose
answers collide).
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

Encode = Callable[[list[str]], "np.ndarray"]

NUM_PERM = 64
BANDS = 16
ROWS = NUM_PERM // BANDS
SHINGLE = 3
_WORDS = re.compile(r"\w+")
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def _permutations() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0x5EED)
    a = rng.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.uint64) | np.uint64(1)  # odd
    b = rng.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)
    return a, b


_PERM: tuple[Any, Any] | None = None


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """The word k-shingles of a text (lower-cased words, each Chinese or Japanese character a
    word; the whole text when shorter).
    """
    words = _WORDS.findall(_CJK.sub(r" \1 ", text.lower()))
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[n : n + k]) for n in range(len(words) - k + 1)}


def minhash(text: str) -> np.ndarray:
    """The MinHash signature (``NUM_PERM`` uint64) of a text's word shingles; deterministic.

    Each shingle is hashed with CRC-32 (fast, the same in every process), then mixed by
    ``NUM_PERM`` random odd multiply-add permutations modulo 2**64.
    """
    import numpy as np

    global _PERM  # noqa: PLW0603 - computed once
    if _PERM is None:
        _PERM = _permutations()
    a, b = _PERM
    values = np.fromiter((zlib.crc32(s.encode()) for s in shingles(text)), dtype=np.uint64)
    mixed = values[:, None] * a[None, :] + b[None, :]  # uint64 arrays wrap modulo 2**64
    return np.asarray(mixed.min(axis=0), dtype=np.uint64)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The estimated Jaccard similarity of two MinHash signatures."""
    return float((a == b).mean())


@dataclass
class _Entry:
    pattern_id: str
    query: str
    signature: Any
    vector: Any = None


@dataclass(frozen=True)
class Admission:
    """The balance's decision on one example."""

    admitted: bool
    reason: Literal["near_duplicate", "pattern_cap"] | None = None
    detail: str = ""


@dataclass(frozen=True)
class Proposal:
    """An example offered to the balance: its pattern, texts and value score."""

    pattern_id: str
    query: str
    answer: str
    score: float | None


@dataclass
class BalanceStats:
    """What the balance holds."""

    examples: int = 0
    per_pattern: Counter[str] = field(default_factory=Counter)


class DatasetBalance:
    """The near-duplicate and per-pattern index of a dataset; thread-safe."""

    def __init__(
        self,
        *,
        max_per_pattern: int,
        max_near_duplicates: int,
        answer_similarity: float = 0.8,
        query_similarity: float = 0.5,
        encode: Encode | None = None,
    ) -> None:
        self.max_per_pattern = max_per_pattern
        self.max_near_duplicates = max_near_duplicates
        self.answer_similarity = answer_similarity
        self.query_similarity = query_similarity
        self.encode = encode
        self._entries: list[_Entry] = []
        self._buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self._per_pattern: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def stats(self) -> BalanceStats:
        """Examples indexed and their count per pattern."""
        return BalanceStats(len(self._entries), Counter(self._per_pattern))

    def load(self, path: Path) -> int:
        """Index the examples of a JSONL dataset (unreadable lines are ignored); returns them."""
        path = Path(path)
        if not path.exists():
            return 0
        n = 0
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    data = json.loads(line)
                    messages = data["messages"]
                    pattern_id = str(data["metadata"]["pattern_id"])
                except (ValueError, KeyError, TypeError):
                    continue
                query = _content(messages, "user")
                answer = _content(messages, "assistant")
                if answer:
                    with self._lock:
                        self._add(pattern_id, query, minhash(answer))
                    n += 1
        return n

    def _add(self, pattern_id: str, query: str, signature: Any, vector: Any = None) -> None:
        index = len(self._entries)
        self._entries.append(_Entry(pattern_id, query, signature, vector))
        for key in _band_keys(signature):
            self._buckets[key].append(index)
        self._per_pattern[pattern_id] += 1

    def _near(self, signature: Any) -> list[tuple[int, float]]:
        seen: set[int] = set()
        out: list[tuple[int, float]] = []
        for key in _band_keys(signature):
            for index in self._buckets.get(key, ()):
                if index in seen:
                    continue
                seen.add(index)
                sim = similarity(signature, self._entries[index].signature)
                if sim >= self.answer_similarity:
                    out.append((index, sim))
        return out

    def _prepare_vectors(self, proposals: Sequence[Proposal], signatures: list[Any]) -> list[Any]:
        """Query vectors of the proposals, and of the indexed entries their answers collide
        with, in one encode call; only when some answer collides (else Nones).
        """
        vectors: list[Any] = [None] * len(proposals)
        if self.encode is None:
            return vectors
        keys: Counter[tuple[int, bytes]] = Counter()
        for signature in signatures:
            keys.update(set(_band_keys(signature)))
        within = any(count > 1 for count in keys.values())
        entries: dict[int, _Entry] = {}
        for signature in signatures:
            for index, _ in self._near(signature):
                entry = self._entries[index]
                if entry.vector is None and entry.query:
                    entries[index] = entry
        if not within and not entries and not any(self._near(sig) for sig in signatures):
            return vectors
        texts = [p.query for p in proposals] + [e.query for e in entries.values()]
        encoded = self.encode(texts)
        for entry, vector in zip(entries.values(), encoded[len(proposals) :], strict=True):
            entry.vector = vector
        return list(encoded[: len(proposals)])

    def _paraphrases(self, proposal: Proposal, vector: Any, near: list[tuple[int, float]]) -> int:
        entries = [self._entries[i] for i, _ in near]
        count = sum(1 for e in entries if e.pattern_id == proposal.pattern_id)
        if vector is not None and proposal.query:
            count += sum(
                1
                for e in entries
                if e.pattern_id != proposal.pattern_id
                and e.vector is not None
                and float(vector @ e.vector) >= self.query_similarity
            )
        return count

    def admit(self, proposals: Sequence[Proposal]) -> list[Admission]:
        """Decide on a batch (best score first) and index the admitted; in input order."""
        order = sorted(
            range(len(proposals)),
            key=lambda n: (-(proposals[n].score or 0.0), n),
        )
        signatures = [minhash(p.answer) for p in proposals]
        out: list[Admission | None] = [None] * len(proposals)
        with self._lock:
            vectors = self._prepare_vectors(proposals, signatures)
            for n in order:
                out[n] = self._admit_one(proposals[n], signatures[n], vectors[n])
        return [a for a in out if a is not None]

    def _admit_one(self, proposal: Proposal, signature: Any, vector: Any) -> Admission:
        have = self._per_pattern[proposal.pattern_id]
        if have >= self.max_per_pattern:
            return Admission(
                False,
                "pattern_cap",
                f"pattern {proposal.pattern_id} already has {have} examples "
                f"(max {self.max_per_pattern})",
            )
        near = self._near(signature)
        if near:
            twins = self._paraphrases(proposal, vector, near)
            if twins >= self.max_near_duplicates:
                best = max(sim for _, sim in near)
                return Admission(
                    False,
                    "near_duplicate",
                    f"{twins} example(s) with a near-identical answer (similarity up to "
                    f"{best:.2f}) to the same question in other words are in "
                    f"(max {self.max_near_duplicates})",
                )
        self._add(proposal.pattern_id, proposal.query, signature, vector)
        return Admission(True)


def _band_keys(signature: Any) -> list[tuple[int, bytes]]:
    return [(band, signature[band * ROWS : (band + 1) * ROWS].tobytes()) for band in range(BANDS)]


def _content(messages: Any, role: str) -> str:
    if not isinstance(messages, list):
        return ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == role:
            return str(message.get("content") or "")
    return ""
