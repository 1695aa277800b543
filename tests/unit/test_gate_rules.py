"""The substance gate: one test per refusal reason, and content that must pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from extractors.extract import Extractor
from extractors.fakellm import FakeChatServer, Reply
from extractors.gate import (
    GateSettings,
    Verdict,
    assess,
    commands_in,
    informative_tokens,
    repetition_ratio,
    steps_in,
)
from extractors.llm import NoPattern, parse_pattern_fields
from extractors.metrics import ExtractMetrics
from learnstream.core.settings import ExtractSettings
from tests.unit.test_extract_support import RESPONSE, candidate


def verdict(
    response: str | None, query: str | None = "How do I squash my last commits?"
) -> Verdict:
    return assess(candidate(query=query, response=response))


# --- refusals, one per reason ---------------------------------------------------------------


def test_empty_response() -> None:
    for response in (None, "", "   \n  "):
        v = verdict(response)
        assert not v.passed and v.reason == "empty"


def test_echo_of_the_question() -> None:
    v = verdict("How do I squash my last commits?")
    assert (v.passed, v.reason) == (False, "echo")
    v = verdict("squash my last commits", query="How do I squash my last commits in git?")
    assert v.reason == "echo"
    # rephrased without adding anything: most informative words are the question's
    v = verdict("You want to squash your last commits.")
    assert v.reason == "echo"
    assert v.measures["echo_overlap"] >= 0.7


def test_a_sentence_repeated() -> None:
    v = verdict("I can help with that. I can help with that. I can help with that.")
    assert (v.passed, v.reason) == (False, "repetition")
    assert v.measures["repetition_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    assert "67%" in v.detail
    assert repetition_ratio("A b c. A b c.")[0] == 0.5
    assert repetition_ratio("One sentence only.") == (0.0, 1)


def test_refusal() -> None:
    for text in (
        "Sorry, I can't help with that.",
        "I cannot assist with this request.",
        "As an AI, I am unable to do that.",
    ):
        v = verdict(text, query="write me a poem")
        assert (v.passed, v.reason) == (False, "refusal"), text


def test_apology() -> None:
    for text in ("I'm sorry, I don't know.", "Sorry about that!", "My apologies for the delay."):
        v = verdict(text, query="what's the weather like?")
        assert (v.passed, v.reason) == (False, "apology"), text


def test_generic_acknowledgement() -> None:
    for text in (
        "I can help with that.",
        "Sure! Happy to help. Let me know what you need.",
        "Great question! Let me know if there is anything else.",
        "ok",
    ):
        v = verdict(text, query="tell me a joke")
        assert (v.passed, v.reason) == (False, "acknowledgement"), text
        assert "0 informative word(s)" in v.detail or "informative" in v.detail


def test_too_short_to_teach_anything() -> None:
    v = verdict(
        "Why did the chicken cross the road? To get to the other side.", query="tell me a joke"
    )
    assert (v.passed, v.reason) == (False, "too_short")
    assert v.measures["novel_tokens"] < 8
    # the threshold is a setting
    lenient = assess(
        candidate(query="tell me a joke", response="Why did the chicken cross the road?"),
        GateSettings(min_informative_tokens=2),
    )
    assert lenient.passed and lenient.basis == ("explanation",)


def test_stock_words_do_not_count_as_information() -> None:
    assert informative_tokens("Sure, happy to help! Let me know.") == []
    assert informative_tokens("Use `max.poll.interval.ms` = 300000") == [
        "use",
        "max.poll.interval.ms",
        "300000",
    ]


# --- content that must pass -------------------------------------------------------------------


def test_a_short_but_real_command_answer_passes() -> None:
    for text in (
        "Run `git rebase -i HEAD~3` and mark them squash.",
        "git rebase -i HEAD~3",
        "$ kubectl rollout undo deployment/api",
    ):
        v = verdict(text)
        assert v.passed, (text, v)
        assert "commands" in v.basis
    assert commands_in("Apply it with `sudo nixos-rebuild switch`.") == [
        "sudo nixos-rebuild switch"
    ]
    assert commands_in("Use `this` word.") == []


def test_code_only_passes() -> None:
    v = verdict("```python\nprint('hi')\n```", query="How do I print in Python?")
    assert v.passed and v.basis == ("code",)
    completion = "def evict(self):\n    key = next(iter(self.data))\n    del self.data[key]\n"
    v = verdict(completion, query="def evict(self):")
    assert v.passed and "code" in v.basis
    one_line = verdict("useDHCP = false;", query="networking.interfaces.enp3s0.")
    assert one_line.passed and one_line.basis == ("code",)
    setting = verdict(
        "Set `enable.idempotence=true` on the producer.", query="exactly once with Kafka?"
    )
    assert setting.passed and setting.basis == ("code",)


def test_numbered_steps_pass() -> None:
    text = (
        "1. Build the image with the release tag.\n"
        "2. Push the image to the registry.\n"
        "3. Roll out the deployment."
    )
    v = verdict(text, query="How do I deploy?")
    assert v.passed and v.basis == ("steps",)
    assert len(steps_in(text)) == 3
    # list items of filler are not steps
    assert not verdict("1. Sure!\n2. Sure!\n3. Sure!", query="How do I deploy?").passed


def test_a_concrete_explanation_passes_even_with_an_apology() -> None:
    v = verdict(
        "Sorry for the confusion: processing a batch takes longer than the max poll interval, "
        "so the coordinator assumes the member died and reassigns its partitions; poll more "
        "often or process fewer records per poll.",
        query="Why does my consumer keep rebalancing?",
    )
    assert v.passed and v.basis == ("explanation",)
    assert verdict(RESPONSE).passed


def test_the_verdict_is_deterministic() -> None:
    c = candidate(response="I can help with that.")
    assert assess(c) == assess(c)


# --- both extractors ----------------------------------------------------------------------------


def _extractor(**kw: Any) -> tuple[Extractor, CollectorRegistry]:
    registry = CollectorRegistry()
    return Extractor(ExtractSettings(**kw), ExtractMetrics.on(registry)), registry


def test_heuristic_extraction_refuses_filler_with_a_reason() -> None:
    ex, registry = _extractor()
    result = ex.extract(candidate("e9", query="tell me a joke", response="I can help with that."))
    assert result.pattern is None
    assert result.refusal is not None
    assert (result.refusal.kind, result.refusal.reason) == ("pattern", "acknowledgement")
    assert result.refusal.decided_by == "rules"
    assert result.refusal.event_id == "e9"
    assert result.refusal.response_excerpt == "I can help with that."
    assert (
        registry.get_sample_value(
            "learnstream_patterns_extracted_total", {"extractor": "heuristic"}
        )
        is None
    )
    ok = ex.extract(candidate())
    assert ok.pattern is not None and ok.refusal is None and "code" in ok.basis


def test_the_gate_can_be_switched_off() -> None:
    ex, _ = _extractor(gate=False)
    result = ex.extract(candidate(query="tell me a joke", response="I can help with that."))
    assert result.pattern is not None and result.refusal is None


def test_refusal_excerpts_are_redacted() -> None:
    ex, _ = _extractor()
    result = ex.extract(candidate(query="my password=hunter2 ok?", response="Sure!"))
    assert result.refusal is not None
    assert "hunter2" not in result.refusal.model_dump_json()


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer() as s:
        yield s


def test_llm_may_answer_no_pattern_with_a_reason(server: FakeChatServer) -> None:
    server.push(
        [Reply(content=json.dumps({"pattern": None, "reason": "echo: it restates the task"}))]
    )
    ex, registry = _extractor(llm_base_url=server.url, max_retries=0)
    # substantive by the rules (it has code), but the model finds nothing reusable in it
    result = ex.extract(candidate())
    assert result.pattern is None
    assert result.refusal is not None
    assert (result.refusal.reason, result.refusal.decided_by) == ("llm_no_pattern", "llm")
    assert result.refusal.detail == "echo: it restates the task"
    assert result.llm_error is None
    assert len(server.requests) == 1  # an answer, not a failure: no repair, no fallback
    assert "no pattern" in server.requests[0].body["messages"][0]["content"].lower()
    assert not registry.get_sample_value("learnstream_extract_llm_fallbacks_total")


def test_rules_refuse_before_the_llm_is_asked(server: FakeChatServer) -> None:
    ex, _ = _extractor(llm_base_url=server.url)
    result = ex.extract(candidate(query="thanks!", response="You're welcome!"))
    assert result.pattern is None and result.refusal is not None
    assert result.refusal.decided_by == "rules"
    assert server.requests == []


def test_no_pattern_replies_are_recognized() -> None:
    with pytest.raises(NoPattern) as info:
        parse_pattern_fields('```json\n{"no_pattern": true, "reason": "small talk"}\n```')
    assert info.value.reason == "small talk"
    with pytest.raises(NoPattern):
        parse_pattern_fields('{"pattern": null}')
    assert (
        parse_pattern_fields(
            json.dumps({"name": "Do it", "description": "A thing that is done.", "pattern": "x"})
        ).name
        == "Do it"
    )


def test_explanations_in_other_languages_pass() -> None:
    german = verdict(
        "Der Verbraucher verliert seine Partitionen, weil die Verarbeitung eines Stapels länger "
        "dauert als das erlaubte Intervall zwischen zwei Abfragen.",
        query="Warum wird mein Consumer ständig neu zugewiesen?",
    )
    assert german.passed, german
    chinese = verdict(
        "处理一批消息的时间超过了两次轮询之间允许的最长间隔\uff0c协调器认为该成员已失效并重新分配分区。",
        query="为什么我的消费者一直在重新平衡\uff1f",
    )
    assert chinese.passed, chinese
    assert (
        verdict(
            "为什么我的消费者一直在重新平衡\uff1f", query="为什么我的消费者一直在重新平衡\uff1f"
        ).reason
        == "echo"
    )
    assert verdict("好的\uff01", query="讲个笑话").reason == "too_short"
