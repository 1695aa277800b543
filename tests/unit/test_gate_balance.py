"""Dataset balance (near-duplicates, per-pattern cap) and the refusals log, without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from extractors.balance import DatasetBalance, Proposal, minhash, shingles, similarity
from extractors.dataset import stats
from extractors.refusals import RefusalLog, refusal_of, refusal_stats, refusals_path_for
from tests.tinymodel import dataset_line
from tests.unit.test_extract_support import candidate

ANSWER = (
    "Use an interactive rebase over the last commits and mark all but the first as squash, "
    "then force-push with lease: git rebase -i HEAD~3 and git push --force-with-lease."
)
REWORDED = ANSWER.replace("Use an interactive", "Run an interactive")
OTHER = "Disable DHCP and declare the static address on the interface in configuration.nix."


class Words:
    """A fake encoder: a vector per topic word, so 'squash' questions are paraphrases."""

    TOPICS = ("squash", "nixos", "docker")

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), len(self.TOPICS) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            hits = [k for k, word in enumerate(self.TOPICS) if word in text.lower()]
            out[row, hits[0] if hits else -1] = 1.0
        return out


def balance(**kw: float) -> tuple[DatasetBalance, Words]:
    words = Words()
    settings: dict[str, float] = {"max_per_pattern": 8, "max_near_duplicates": 2}
    settings.update(kw)
    return DatasetBalance(encode=words, **settings), words  # type: ignore[arg-type]


def test_minhash_estimates_jaccard_and_is_deterministic() -> None:
    assert similarity(minhash(ANSWER), minhash(ANSWER)) == 1.0
    assert np.array_equal(minhash(ANSWER), minhash(ANSWER))
    assert similarity(minhash(ANSWER), minhash(REWORDED)) >= 0.8
    assert similarity(minhash(ANSWER), minhash(OTHER)) < 0.2
    assert shingles("a b") == {"a b"}


def test_near_duplicate_answers_to_paraphrases_are_capped() -> None:
    b, _ = balance()
    questions = [
        "How do I squash commits?",
        "squash my last three commits",
        "Can I squash commits before pushing?",
    ]
    out = b.admit([Proposal(f"p{n}", q, ANSWER, 0.8) for n, q in enumerate(questions)])
    assert [a.admitted for a in out] == [True, True, False]
    assert out[2].reason == "near_duplicate"
    assert "max 2" in out[2].detail
    # a near-identical (reworded) answer to another paraphrase is a duplicate too
    [again] = b.admit([Proposal("p9", "squash them all", REWORDED, 0.9)])
    assert (again.admitted, again.reason) == (False, "near_duplicate")
    # a different answer to the same question is not
    [fresh] = b.admit([Proposal("p0", "How do I squash commits?", OTHER, 0.8)])
    assert fresh.admitted


def test_the_same_answer_to_unrelated_questions_is_not_a_duplicate() -> None:
    b, words = balance()
    questions = ["squash commits", "nixos static ip", "docker image size", "anything else"]
    out = b.admit([Proposal(f"p{n}", q, ANSWER, 0.8) for n, q in enumerate(questions)])
    assert all(a.admitted for a in out)
    assert len(words.calls) == 1  # one batched encode for the whole batch


def test_without_collisions_nothing_is_encoded() -> None:
    b, words = balance()
    b.admit([Proposal("a", "squash", ANSWER, 0.8), Proposal("b", "nixos", OTHER, 0.8)])
    assert words.calls == []


def test_best_scored_first_within_a_batch() -> None:
    b, _ = balance(max_near_duplicates=1)
    out = b.admit(
        [
            Proposal("p1", "squash commits", ANSWER, 0.71),
            Proposal("p2", "squash my commits", ANSWER, 0.93),
        ]
    )
    assert [a.admitted for a in out] == [False, True]


def test_per_pattern_cap() -> None:
    b, _ = balance(max_per_pattern=2, max_near_duplicates=100)
    answers = [ANSWER, OTHER, "Run docker build with a slim base image and multi-stage build."]
    out = b.admit([Proposal("p", "squash", a, 0.8) for a in answers])
    assert [a.admitted for a in out] == [True, True, False]
    assert out[2].reason == "pattern_cap"
    assert b.stats.per_pattern["p"] == 2


def test_load_rebuilds_the_index_from_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    path.write_text(
        dataset_line("squash commits", ANSWER, pattern_id="p1", event_id="e1")
        + "\n"
        + dataset_line("squash them", ANSWER, pattern_id="p1", event_id="e2")
        + "\nnot json\n"
    )
    b, _ = balance()
    assert b.load(path) == 2
    [out] = b.admit([Proposal("p1", "squash again", ANSWER, 0.99)])
    assert (out.admitted, out.reason) == (False, "near_duplicate")


def test_refusal_log_keeps_each_event_once_and_counts_by_reason(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset" / "dataset.jsonl"
    path = refusals_path_for(dataset)
    assert path == tmp_path / "dataset" / "dataset.refusals.jsonl"
    log = RefusalLog(path)
    filler = candidate("e1", query="tell me a joke", response="I can help with that. " * 50)
    first = refusal_of(filler, kind="pattern", reason="repetition", detail="x", decided_by="rules")
    skip = refusal_of(
        candidate("e2"),
        kind="example",
        reason="near_duplicate",
        detail="y",
        decided_by="balance",
        pattern_id="p1",
    )
    assert log.append([first, skip, first]) == [True, True, False]
    assert RefusalLog(path).append([first]) == [False]  # a new process knows it too
    assert ("e1", "pattern") in RefusalLog(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event_id"] for x in lines] == ["e1", "e2"]
    assert len(lines[0]["response_excerpt"]) <= 300
    assert lines[0]["response_excerpt"].endswith("\u2026")
    with path.open("a") as fh:  # a torn last line is ignored, then ended by the next append
        fh.write('{"kind": "pattern", "reas')
    got = refusal_stats(path)
    assert (got.refused, got.skipped) == (1, 1)
    assert got.refused_by_reason == {"repetition": 1}
    assert got.skipped_by_reason == {"near_duplicate": 1}
    third = refusal_of(
        candidate("e3", response="Sure!"),
        kind="pattern",
        reason="acknowledgement",
        detail="z",
        decided_by="rules",
    )
    assert RefusalLog(path).append([third]) == [True]
    assert refusal_stats(path).refused_by_reason == {"repetition": 1, "acknowledgement": 1}


def test_dataset_stats_show_balance_and_refusals(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset.jsonl"
    lines = [
        dataset_line("q1", "a1", pattern_id="p1", event_id="e1"),
        dataset_line("q2", "a2", pattern_id="p1", event_id="e2"),
        dataset_line("q3", "a3", pattern_id="p1", event_id="e3"),
        dataset_line("q4", "a4", pattern_id="p2", event_id="e4"),
    ]
    dataset.write_text("\n".join(lines) + "\n")
    RefusalLog(refusals_path_for(dataset)).append(
        [
            refusal_of(
                candidate("e9", response="Sure!"),
                kind="pattern",
                reason="acknowledgement",
                detail="",
                decided_by="rules",
            )
        ]
    )
    data = stats(dataset).to_dict()
    assert data["balance"]["patterns"] == 2
    assert data["balance"]["max"] == 3
    assert data["balance"]["top"] == {"p1": 3, "p2": 1}
    assert data["balance"]["top_share"] == 0.75
    assert data["balance"]["sources"] == {"ralph": 1.0}
    assert data["refusals"]["refused"] == 1
    assert data["refusals"]["refused_by_reason"] == {"acknowledgement": 1}
    json.dumps(data)  # what `learnstream dataset stats` prints


def test_answers_without_spaces_are_compared_by_character() -> None:
    one, two = "处理一批消息的时间超过了允许的间隔", "协调器认为该成员已失效并重新分配分区"
    assert len(shingles(one)) > 10
    assert similarity(minhash(one), minhash(two)) < 0.2
