"""Dataset snapshot, deduplication and the train/eval split by source query."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.tinymodel import dataset_line, write_dataset
from trainers.data import (
    assign_split,
    load_examples,
    normalize_query,
    prepare_dataset,
    snapshot_dataset,
    split_examples,
)


def _sides(data_train: list, data_eval: list) -> tuple[set[str], set[str]]:
    return {e.query for e in data_train}, {e.query for e in data_eval}


def test_split_keeps_each_query_on_one_side(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", queries=200, per_query=3)
    # Case and whitespace variants of a query are the same group.
    with dataset.open("a") as fh:
        variant = "  HOW do I fix the failing test   in project 1? "
        fh.write(dataset_line(variant, "x", pattern_id="p", event_id="v1") + "\n")
    data = prepare_dataset(dataset, tmp_path / "run", eval_fraction=0.2, seed=7)
    train, held_out = _sides(data.train, data.eval)
    assert train and held_out
    assert not train & held_out
    assert normalize_query("  HOW do I fix the failing test   in project 1? ") in train | held_out
    # Roughly the asked-for share of queries is held out.
    assert 0.1 < len(held_out) / (len(train) + len(held_out)) < 0.3
    assert data.lineage.train_examples + data.lineage.eval_examples == 601


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", queries=100)
    first = prepare_dataset(dataset, tmp_path / "a", eval_fraction=0.2, seed=1)
    again = prepare_dataset(dataset, tmp_path / "b", eval_fraction=0.2, seed=1)
    other = prepare_dataset(dataset, tmp_path / "c", eval_fraction=0.2, seed=2)
    assert [e.content_hash for e in first.eval] == [e.content_hash for e in again.eval]
    assert {e.query for e in first.eval} != {e.query for e in other.eval}


def test_split_is_stable_when_the_dataset_grows(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", queries=80)
    before = prepare_dataset(dataset, tmp_path / "a", eval_fraction=0.25, seed=3)
    write_dataset(dataset, queries=120, start=80)
    after = prepare_dataset(dataset, tmp_path / "b", eval_fraction=0.25, seed=3)
    old_train, old_eval = _sides(before.train, before.eval)
    new_train, new_eval = _sides(after.train, after.eval)
    assert old_train <= new_train
    assert old_eval <= new_eval
    assert before.snapshot.sha256 != after.snapshot.sha256


def test_assign_split_is_a_pure_function() -> None:
    sides = [assign_split(f"q{i}", 0.3, 0) for i in range(1000)]
    assert sides == [assign_split(f"q{i}", 0.3, 0) for i in range(1000)]
    assert 200 < sides.count("eval") < 400


def test_deduplicates_and_skips_invalid_lines(tmp_path: Path) -> None:
    dataset = tmp_path / "d.jsonl"
    line = dataset_line("q one", "a one", pattern_id="p1", event_id="e1")
    same_content = dataset_line("q one", "a one", pattern_id="p1", event_id="e-replayed")
    dataset.write_text(
        "\n".join(
            [
                line,
                same_content,
                "",
                "{not json",
                json.dumps({"messages": [{"role": "user", "content": "only one"}]}),
                dataset_line("q two", "a two", pattern_id="p2", event_id="e2"),
            ]
        )
        + "\n"
    )
    examples, lines, invalid = load_examples(dataset)
    assert (len(examples), lines, invalid) == (3, 5, 2)
    data = prepare_dataset(dataset, tmp_path / "run", eval_fraction=0.5, seed=0)
    assert data.lineage.duplicates == 1
    assert data.lineage.invalid_lines == 2
    assert len(data.train) + len(data.eval) == 2
    assert data.lineage.pattern_ids == ["p1", "p2"]
    assert data.lineage.event_ids == ["e1", "e2"]


def test_snapshot_hashes_the_copy_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    dataset = tmp_path / "d.jsonl"
    whole = dataset_line("q", "a", pattern_id="p", event_id="e") + "\n"
    dataset.write_text(whole + '{"messages": [{"role"')
    snap = snapshot_dataset(dataset, tmp_path / "run")
    assert snap.path.read_text() == whole
    assert snap.sha256 == hashlib.sha256(whole.encode()).hexdigest()
    # A complete last line without a newline is kept.
    dataset.write_text(whole + whole.strip())
    snap = snapshot_dataset(dataset, tmp_path / "run2")
    assert len(load_examples(snap.path)[0]) == 2


def test_split_examples_keeps_order_within_sides(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d.jsonl", queries=30, per_query=2)
    examples, _, _ = load_examples(dataset)
    train, held_out = split_examples(examples, 0.3, 0)
    assert train == [e for e in examples if e in train]
    assert held_out == [e for e in examples if e in held_out]
