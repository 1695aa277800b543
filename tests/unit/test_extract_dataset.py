"""The JSONL dataset: no duplicates across restarts, no torn lines, validation, loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from extractors.dataset import DatasetWriter, build_example, content_hash, stats, validate
from extractors.heuristic import heuristic_pattern
from extractors.metrics import ExtractMetrics
from schemas.base import Source
from schemas.pattern import DatasetExample
from tests.unit.test_extract_support import candidate

SYSTEM = "You are a helpful coding assistant."


def example(n: int, **kw: object) -> DatasetExample:
    c = candidate(f"e{n}", query=f"How do I do task number {n}?", **kw)  # type: ignore[arg-type]
    ex = build_example(c, heuristic_pattern(c), system_prompt=SYSTEM)
    assert ex is not None
    return ex


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_example_shape() -> None:
    ex = example(1)
    assert [m.role for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.messages[1].content == "How do I do task number 1?"
    meta = ex.model_dump(mode="json")["metadata"]
    assert meta == {
        "schema_version": 1,
        "pattern_id": meta["pattern_id"],
        "event_id": "e1",
        "value_score": 0.85,
        "source": "aidb",
        "tags": meta["tags"],
        "timestamp": "2026-11-02T09:00:00Z",
        "extractor": "heuristic",
        "content_hash": content_hash(ex.messages),
    }
    no_response = candidate(response=None)
    assert build_example(no_response, heuristic_pattern(no_response), system_prompt=SYSTEM) is None


def test_duplicates_are_skipped_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ds" / "dataset.jsonl"
    registry = CollectorRegistry()
    metrics = ExtractMetrics.on(registry)
    with DatasetWriter(path, metrics) as w:
        assert w.append([example(1), example(2), example(1)]) == [True, True, False]
        assert w.lines == 2
    # same messages from another event (another id, other metadata): still a duplicate
    again = example(2).model_copy(update={"metadata": example(3).metadata})
    with DatasetWriter(path, metrics) as w:
        assert w.lines == 2
        assert w.append([again, example(3)]) == [False, True]
        assert w.size == path.stat().st_size
    assert [line["metadata"]["event_id"] for line in read_lines(path)] == ["e1", "e2", "e3"]  # type: ignore[index]
    assert registry.get_sample_value("learnstream_dataset_duplicates_skipped_total") == 2
    assert registry.get_sample_value("learnstream_dataset_lines") == 3


def test_two_writers_do_not_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    a, b = DatasetWriter(path), DatasetWriter(path)
    a.open()
    b.open()
    assert a.append([example(1)]) == [True]
    assert b.append([example(1), example(2)]) == [False, True]  # b catches up on a's line
    assert a.append([example(2)]) == [False]
    a.close()
    b.close()
    assert len(read_lines(path)) == 2


def test_torn_trailing_line_is_truncated_on_open(tmp_path: Path, caplog: object) -> None:
    path = tmp_path / "dataset.jsonl"
    with DatasetWriter(path) as w:
        w.append([example(1), example(2)])
    good = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"messages": [{"role": "system", "content": "You are')
    assert stats(path).torn_tail
    report = validate(path)
    assert [(e.line, e.message) for e in report.errors] == [(3, "torn trailing line (no newline)")]

    registry = CollectorRegistry()
    with DatasetWriter(path, ExtractMetrics.on(registry)) as w:
        assert path.read_bytes() == good
        assert w.lines == 2
        assert w.append([example(3)]) == [True]
    assert registry.get_sample_value("learnstream_dataset_torn_repairs_total") == 1
    assert validate(path).ok
    assert len(read_lines(path)) == 3


CHILD = """
import sys
from extractors.dataset import DatasetWriter
from extractors.heuristic import heuristic_pattern
from extractors.dataset import build_example
from tests.unit.test_extract_support import candidate

path, start = sys.argv[1], int(sys.argv[2])
body = "x" * 60000
with DatasetWriter(path, fsync=False) as w:
    n = start
    while True:
        c = candidate(f"e{n}", query=f"task {n}?", response=f"answer {n} " + body)
        w.append([build_example(c, heuristic_pattern(c), system_prompt="s")])
        n += 1
"""


def test_sigkill_never_leaves_torn_or_repeated_lines(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "0"], env=env, cwd=repo)
        deadline = time.monotonic() + 20
        start_size = path.stat().st_size if path.exists() else 0
        while (not path.exists() or path.stat().st_size < start_size + 2_000_000) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with DatasetWriter(path) as w:  # repairs a torn tail, if any
            lines = w.lines
        report = validate(path)
        assert report.ok, report.summary()
        assert report.lines == lines
    s = stats(path)
    assert s.duplicates == 0 and not s.torn_tail and s.invalid == 0
    ids = [line["metadata"]["event_id"] for line in read_lines(path)]  # type: ignore[index]
    assert len(ids) == len(set(ids))
    # every restart began again at e0 and only appended what was missing
    assert ids == [f"e{n}" for n in range(len(ids))]


def test_validate_reports_each_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    good = example(1).model_dump(mode="json")
    bad_role = json.loads(json.dumps(good))
    bad_role["messages"] = [bad_role["messages"][0], bad_role["messages"][2]]
    empty = json.loads(json.dumps(good))
    empty["messages"][2]["content"] = "   "
    no_meta = {"messages": good["messages"]}
    lines = [
        json.dumps(good),
        "not json",
        "[1, 2]",
        json.dumps(no_meta),
        json.dumps(bad_role),
        json.dumps(empty),
        json.dumps(good),
        json.dumps(example(2).model_dump(mode="json")),
    ]
    path.write_text("\n".join(lines) + "\n")
    report = validate(path)
    assert report.lines == 8 and report.valid == 2
    by_line = {e.line: e.message for e in report.errors}
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert by_line[2].startswith("not JSON")
    assert by_line[3] == "not a JSON object: list"
    assert by_line[4] == "metadata: Field required"
    assert "expected 'user'" in by_line[5]
    assert by_line[6] == "message 2 has blank content"
    assert by_line[7] == "duplicate of line 1"
    assert not report.ok
    assert "line 2: not JSON" in report.summary()


class WordTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def test_validate_checks_token_length(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    with DatasetWriter(path) as w:
        w.append([example(1), example(2, response="short answer")])
    report = validate(path, tokenizer=WordTokenizer(), max_tokens=40)
    assert report.max_tokens_seen is not None and report.max_tokens_seen > 40
    assert [e.line for e in report.errors] == [1]
    assert "tokens, more than 40" in report.errors[0].message


def test_stats(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    with DatasetWriter(path) as w:
        w.append([example(1), example(2, source=Source.RALPH), example(3, source=Source.RALPH)])
    with path.open("a") as f:
        f.write("garbage\n")
    s = stats(path)
    assert (s.lines, s.valid, s.invalid, s.duplicates) == (4, 3, 1, 0)
    assert s.bytes == path.stat().st_size
    assert s.by_source == {"ralph": 2, "aidb": 1}
    assert s.by_tag["python"] == 3
    assert s.by_extractor == {"heuristic": 3}
    assert json.loads(json.dumps(s.to_dict()))["lines"] == 4
    assert stats(tmp_path / "missing.jsonl").lines == 0


def test_loads_with_datasets(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dataset.jsonl"
    with DatasetWriter(path) as w:
        w.append(
            [
                example(1),
                example(2, score=None),  # null score
                example(3, response="Plain answer without code or keywords."),  # fewer tags
                example(4, source=Source.VSCODE, score=1.0),
            ]
        )
    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(ds) == 4
    assert set(ds.column_names) == {"messages", "metadata"}
    row = ds[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["metadata"]["event_id"] == "e1"
    assert [r["value_score"] for r in ds["metadata"]] == [0.85, None, 0.85, 1.0]
