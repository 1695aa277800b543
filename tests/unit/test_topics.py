"""The topic catalog, the rpk script generated from it, and the models' key fields."""

from __future__ import annotations

import re

from learnstream.topicadmin import rpk_script
from schemas import EVENT_MODELS, TOPICS, Source, telemetry_topic
from schemas.topics import TELEMETRY
from tests.conftest import REPO


def test_the_catalog_has_the_topics_of_the_design() -> None:
    assert set(TOPICS) == {
        "telemetry.ralph",
        "telemetry.aidb",
        "telemetry.hybrid",
        "telemetry.vscode",
        "interactions.scored",
        "patterns.candidates",
        "patterns.learned",
        "training.triggers",
        "training.results",
        "telemetry.dlq",
    }
    for spec in TOPICS.values():
        assert spec.partitions >= 1
        assert spec.retention_ms == -1 or spec.retention_ms > 0
        assert spec.cleanup_policy in {"delete", "compact"}
        assert spec.config()["retention.ms"] == str(spec.retention_ms)


def test_each_source_has_a_telemetry_topic_keyed_by_its_first_key_field() -> None:
    for source in Source:
        assert telemetry_topic(source) == f"telemetry.{source.value}"
        for model in set(EVENT_MODELS[source].values()):
            assert model.KEY_FIELDS[0] == TELEMETRY[source].key
            assert TELEMETRY[source].key in model.model_fields


def test_committed_rpk_script_matches_the_registry() -> None:
    committed = (REPO / "deploy" / "redpanda" / "topics.sh").read_text()
    assert committed == rpk_script(), (
        "regenerate: learnstream topics rpk-script > deploy/redpanda/topics.sh"
    )


def test_rpk_script_creates_every_topic_with_its_settings() -> None:
    seen = {}
    for line in rpk_script().splitlines():
        m = re.match(
            r"rpk topic create (\S+) -p (\d+) .*-c cleanup.policy=(\w+) -c retention.ms=(-?\d+)",
            line,
        )
        if m:
            seen[m.group(1)] = (int(m.group(2)), m.group(3), int(m.group(4)))
    assert seen == {n: (s.partitions, s.cleanup_policy, s.retention_ms) for n, s in TOPICS.items()}
