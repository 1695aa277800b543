"""The deterministic extractor."""

from __future__ import annotations

from extractors.heuristic import code_blocks, heuristic_pattern, is_bare_code, name_from
from extractors.patterns import pattern_id_for
from schemas.base import Source
from tests.unit.test_extract_support import T0, candidate


def test_pattern_fields_from_a_markdown_answer() -> None:
    p = heuristic_pattern(candidate(tools_used=["nix_search_options"], files_modified=["a.py"]))
    assert p.name == "Write a pytest fixture for a Kafka consumer"
    assert p.description.startswith("Patch the Consumer class with a MagicMock")
    assert p.steps == [
        "Create a list of fake messages.",
        "Patch `app.sink.Consumer` with a factory returning the mock.",
        "Assert `close()` was called after the test.",
    ]
    assert p.example is not None
    assert p.example.startswith("```python\nimport pytest")
    assert p.example.endswith("```")
    # third-party imports only (unittest is stdlib), then the tools
    assert p.prerequisites == [
        "python package: pytest",
        "python package: confluent_kafka",
        "tool: nix_search_options",
    ]
    assert p.tags[0] == "aidb"
    assert {"python", "pytest", "kafka", "nix_search_options"} <= set(p.tags)
    assert p.source_query == "How do I write a pytest fixture for a Kafka consumer?"
    assert p.source_event_ids == ["evt-1"]
    assert p.extractor == "heuristic"
    assert p.created_at == p.updated_at == T0
    assert p.prompt_version is None and p.extractor_model is None


def test_deterministic_and_id_from_the_normalized_query() -> None:
    a = heuristic_pattern(candidate("e1"))
    b = heuristic_pattern(candidate("e1"))
    assert a == b
    c = heuristic_pattern(
        candidate("e2", query="  how do I write a PYTEST fixture for a kafka consumer ")
    )
    assert c.pattern_id == a.pattern_id
    d = heuristic_pattern(candidate("e3", query="How do I mock a Redis client?"))
    assert d.pattern_id != a.pattern_id
    assert a.pattern_id == pattern_id_for(a.source_query, "anything")


def test_question_phrasing_is_dropped_from_names() -> None:
    assert name_from("How can I set a static IP in NixOS?", None, "x") == "Set a static IP in NixOS"
    assert name_from("please help me to dedupe rows. Thanks!", None, "x") == "Dedupe rows"
    assert name_from(None, "Use a HashMap.\n\nMore text.", "x") == "Use a HashMap"
    assert name_from(None, None, "Fallback") == "Fallback"
    long = name_from("word " * 60, None, "x")
    assert len(long) <= 81 and long.endswith("\u2026")


def test_bare_code_completion_becomes_the_example() -> None:
    code = "def evict(self):\n    key = next(iter(self.data))\n    del self.data[key]\n"
    assert is_bare_code(code)
    assert code_blocks(code) == [("", code.rstrip())]
    p = heuristic_pattern(candidate(query="def evict(self):", response=code, source=Source.VSCODE))
    assert p.example is not None and "del self.data[key]" in p.example
    assert p.steps == []
    assert p.description == f"{p.name}."


def test_prose_only_and_missing_texts() -> None:
    p = heuristic_pattern(
        candidate(response="Run the migration first. Then restart the worker. Done.")
    )
    assert p.example is None
    assert p.steps == ["Run the migration first.", "Then restart the worker.", "Done."]
    q = heuristic_pattern(candidate(query=None, response=None))
    assert q.name == "Aidb completion"
    assert q.source_query is None
    assert q.steps == [] and q.example is None


def test_js_and_rust_imports() -> None:
    response = (
        "Narrow it.\n\n```ts\nimport { z } from 'zod';\nimport fs from 'node:fs';\n"
        "const ws = require('ws');\n```\n\n```rust\nuse std::collections::HashMap;\n"
        "use serde::Deserialize;\n```"
    )
    p = heuristic_pattern(candidate(response=response))
    assert p.prerequisites == ["npm package: zod", "npm package: ws", "rust crate: serde"]
    assert {"typescript", "rust"} <= set(p.tags)
