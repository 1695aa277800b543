"""Any input, of any size, depth or encoding, is a valid event or an `EventError`; any dead
letter fits in one broker record. Property tests (hypothesis) of the parse and serialize paths.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from learnstream.core.metrics import StreamMetrics
from learnstream.core.settings import load_settings
from schemas import Source
from schemas.base import SourceEvent
from schemas.dlq import BROKER_MESSAGE_MAX_BYTES, DEAD_LETTER_MAX_BYTES, DeadLetter
from schemas.errors import EventError
from schemas.parsing import check_structure, decode_json, parse_event
from scorers.stage import RawRecord, ScoringStage
from streams.producers.sdk import raw_of
from tests.unit.events import event

UNSTORABLE = ["\x00", "\ud800", "\udfff", "\udbff\udc00"]
texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), st.sampled_from(UNSTORABLE),
              st.text(max_size=8)),
)  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=30,
)


def _deep(levels: int, leaf: Any = 1) -> Any:
    node = leaf
    for n in range(levels):
        node = {"n": node} if n % 2 else [node]
    return node


def _accepts_or_rejects(source: str, raw: bytes | str | dict[str, Any]) -> SourceEvent | None:
    """parse_event's answer; anything but an event or an EventError fails the test."""
    try:
        return parse_event(source, raw)
    except EventError as exc:
        assert exc.reason and "\n" not in exc.reason
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=st.binary(max_size=300), source=st.sampled_from([s.value for s in Source]))
def test_arbitrary_bytes_are_an_event_or_an_event_error(raw: bytes, source: str) -> None:
    _accepts_or_rejects(source, raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(extra=json_values, key=texts)
def test_arbitrary_json_in_a_valid_event_is_an_event_or_an_event_error(
    extra: Any, key: str
) -> None:
    base = event("aidb", "completion")
    doc = {**base, f"x_{key}": extra}
    raw = json.dumps(doc)  # ensure_ascii: lone surrogates travel as \\udXXX escapes
    parsed = _accepts_or_rejects("aidb", raw)
    from_dict = _accepts_or_rejects("aidb", doc)
    if json.loads(raw) == doc:  # (an escaped surrogate pair decodes to one valid character)
        assert (parsed is None) == (from_dict is None)
    if parsed is not None:  # what is accepted can be serialized and stored
        wire = parsed.to_wire()
        assert b"\\u0000" not in wire
        wire.decode("utf-8")


@pytest.mark.parametrize("levels", [65, 300, 5000, 200_000])
def test_deep_nesting_is_refused_with_a_reason_at_any_depth(levels: int) -> None:
    doc = {**event("aidb", "completion"), "context": _deep(levels)}
    with pytest.raises(EventError) as err:
        parse_event("aidb", doc)
    assert err.value.kind == "too_deep" and "64 levels" in err.value.reason
    raw = '{"event_type": "completion", "context": ' + "[" * levels + "]" * levels + "}"
    with pytest.raises(EventError) as err:
        parse_event("aidb", raw)
    assert err.value.kind == "too_deep"


def test_the_depth_bound_is_a_setting_and_64_levels_pass() -> None:
    doc = {**event("aidb", "completion"), "context": _deep(62)}
    assert parse_event("aidb", doc).event_type == "completion"
    with pytest.raises(EventError, match="deeper than 10 levels"):
        parse_event("aidb", doc, max_depth=10)
    assert load_settings(max_event_depth=10).max_event_depth == 10


@pytest.mark.parametrize(
    ("text", "found"),
    [("a\x00b", "NUL character"), ("a\ud800", "lone surrogate (\\ud800)")],
)
def test_unstorable_text_is_refused_naming_the_field(text: str, found: str) -> None:
    doc = {**event("vscode", "completion"), "context": {"files": ["ok", text]}}
    with pytest.raises(EventError) as err:
        parse_event("vscode", doc)
    assert err.value.kind == "invalid_text"
    assert found in err.value.reason and "context.files.1" in err.value.reason
    with pytest.raises(EventError, match=found.split(" ", maxsplit=1)[0]):
        parse_event("vscode", json.dumps(doc))
    with pytest.raises(EventError, match=r"^a key of field 'context' contains a NUL"):
        check_structure({"context": {"ke\x00y": 1}})


def test_decode_json_refuses_what_is_not_utf8_or_json() -> None:
    for raw in (b"\xff\xfe{}", b"{", "[" * 100_000):
        with pytest.raises(EventError):
            decode_json(raw)


@given(size=st.integers(0, 1 << 20) | st.sampled_from([DEAD_LETTER_MAX_BYTES + 1, 3 << 20]))
@settings(max_examples=20, deadline=None)
def test_every_dead_letter_fits_in_one_broker_record(size: int) -> None:
    letter = DeadLetter.from_bytes(
        b"\xff" * size, key=b"k" * 10_000, error="e" * 50_000, stage="score", source="aidb"
    )
    assert len(letter.model_dump_json()) < BROKER_MESSAGE_MAX_BYTES
    assert letter.original_size == size
    assert letter.original() == b"\xff" * min(size, DEAD_LETTER_MAX_BYTES)


@settings(max_examples=200, deadline=None)
@given(payload=json_values)
def test_raw_of_never_raises(payload: Any) -> None:
    assert isinstance(raw_of(payload), bytes)
    assert isinstance(raw_of(_deep(10_000, payload)), bytes)


def test_a_poison_record_does_not_take_its_batch_mates_down() -> None:

    valid = [json.dumps(event("aidb", "completion", event_id=f"ok-{n}")).encode() for n in range(3)]
    poison = [
        b'{"event_type": "completion", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        json.dumps({**event("aidb", "completion"), "x": "\ud800"}).encode(),
        b'{"event_type": "completion", "response": "' + b"x" * (3 << 20) + b'"}',
        b"\x00\xff",
    ]
    values = [valid[0], *poison[:2], valid[1], *poison[2:], valid[2]]
    records = [
        RawRecord(topic="telemetry.aidb", partition=0, offset=n, key=b"k", value=v)
        for n, v in enumerate(values)
    ]
    # Parsing needs neither the model nor the vector store.
    stage = ScoringStage(
        load_settings(), cast(Any, None), cast(Any, None), StreamMetrics.on(CollectorRegistry())
    )
    parsed, dead = stage.parse(records)
    assert [i.event_id for i in parsed] == ["ok-0", "ok-1", "ok-2"]
    assert [d.offset for d in dead] == [1, 2, 4, 5]
    assert [d.error_kind for d in dead] == ["too_deep", "invalid_text", "oversized", "malformed"]
    assert all(len(d.model_dump_json()) < BROKER_MESSAGE_MAX_BYTES for d in dead)
