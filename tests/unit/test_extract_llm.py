"""The LLM extractor against a real chat-completions HTTP server on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from extractors.extract import Extractor
from extractors.fakellm import FakeChatServer, Reply
from extractors.llm import (
    PROMPT_VERSION,
    BreakerState,
    CircuitBreaker,
    LLMError,
    LLMExtractor,
    load_prompt,
    parse_pattern_fields,
)
from extractors.metrics import ExtractMetrics
from learnstream.core.net import free_port
from learnstream.core.settings import ExtractSettings
from tests.unit.test_extract_support import candidate

GOOD = json.dumps(
    {
        "name": "Mock a Kafka consumer in a pytest fixture",
        "description": "Patch the consumer class with a MagicMock that serves queued messages.",
        "prerequisites": ["pytest"],
        "steps": ["Patch the class", "Yield the mock", "Assert close()"],
        "tags": ["Pytest", "kafka", "Mocking"],
        "example": "```python\nconsumer = MagicMock()\n```",
    }
)


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer() as s:
        yield s


def settings(url: str, **kw: Any) -> ExtractSettings:
    base: dict[str, Any] = {
        "llm_base_url": url,
        "llm_model": "qwen-test",
        "timeout_s": 2.0,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
        "breaker_failure_threshold": 3,
        "breaker_reset_s": 30,
    }
    return ExtractSettings(**(base | kw))


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels or None) or 0.0


def facade(s: ExtractSettings, **kw: Any) -> tuple[Extractor, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ExtractMetrics.on(registry)
    llm = None
    if kw:
        llm = LLMExtractor(s, **kw)
    return Extractor(s, metrics, llm), registry


def test_valid_json_and_what_was_sent(server: FakeChatServer) -> None:
    server.push([Reply(content=GOOD)])
    s = settings(server.url, llm_api_key="sk-local-key")
    ex, registry = facade(s)
    c = candidate(query="Why does my token=abc123secret fail with password=hunter2?")
    result = ex.extract(c)
    p = result.pattern
    assert result.llm_error is None
    assert p.extractor == "llm"
    assert p.extractor_model == "qwen-test"
    assert p.prompt_version == PROMPT_VERSION == "v1"
    assert p.latency_ms is not None and p.latency_ms > 0
    assert p.name == "Mock a Kafka consumer in a pytest fixture"
    assert p.tags == ["aidb", "pytest", "kafka", "mocking"]
    assert p.source_event_ids == ["evt-1"]
    assert p.created_at == c.interaction.timestamp

    [req] = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["Authorization"] == "Bearer sk-local-key"
    body = req.body
    assert body["model"] == "qwen-test"
    assert body["temperature"] == 0.1
    assert body["max_tokens"] == 1024
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": load_prompt()}
    sent = json.dumps(body)
    assert "abc123secret" not in sent and "hunter2" not in sent
    assert "[REDACTED:token]" in req.user_text and "[REDACTED:password]" in req.user_text
    assert value(registry, "learnstream_patterns_extracted_total", extractor="llm") == 1


def test_invalid_then_repaired(server: FakeChatServer) -> None:
    server.push(
        [Reply(content="Sure! Here is the pattern: name = Kafka mock"), Reply(content=GOOD)]
    )
    ex, registry = facade(settings(server.url))
    result = ex.extract(candidate())
    assert result.pattern.extractor == "llm"
    assert len(server.requests) == 2
    repair = server.requests[1].body["messages"]
    assert repair[2] == {
        "role": "assistant",
        "content": "Sure! Here is the pattern: name = Kafka mock",
    }
    assert repair[3]["role"] == "user"
    assert "could not be used: not JSON" in repair[3]["content"]
    assert value(registry, "learnstream_extract_llm_failures_total", kind="invalid_output") == 0


def test_schema_errors_are_sent_back(server: FakeChatServer) -> None:
    server.push([Reply(content='{"name": "", "steps": "one"}'), Reply(content=GOOD)])
    ex, _ = facade(settings(server.url))
    assert ex.extract(candidate()).pattern.extractor == "llm"
    error = server.requests[1].body["messages"][3]["content"]
    assert "name:" in error and "description: Field required" in error


def test_garbage_twice_falls_back_to_the_heuristic(server: FakeChatServer) -> None:
    server.push([Reply(content="no"), Reply(content="[1, 2, 3]")])
    ex, registry = facade(settings(server.url))
    result = ex.extract(candidate())
    assert result.pattern.extractor == "heuristic"
    assert result.llm_error == "invalid_output"
    assert len(server.requests) == 2  # exactly one repair attempt
    assert value(registry, "learnstream_extract_llm_failures_total", kind="invalid_output") == 1
    assert value(registry, "learnstream_extract_llm_fallbacks_total") == 1
    assert value(registry, "learnstream_patterns_extracted_total", extractor="heuristic") == 1


def test_fenced_json_needs_no_repair(server: FakeChatServer) -> None:
    server.push([Reply(content=f"```json\n{GOOD}\n```")])
    ex, _ = facade(settings(server.url))
    assert ex.extract(candidate()).pattern.extractor == "llm"
    assert len(server.requests) == 1


def test_timeouts_are_retried_then_fall_back(server: FakeChatServer) -> None:
    server.push([Reply(content=GOOD, delay_s=1.0)] * 2)
    ex, registry = facade(settings(server.url, timeout_s=0.2, max_retries=1))
    started = time.monotonic()
    result = ex.extract(candidate())
    assert time.monotonic() - started < 1.0
    assert result.pattern.extractor == "heuristic"
    assert result.llm_error == "timeout"
    assert len(server.requests) == 2
    assert value(registry, "learnstream_extract_llm_retries_total", kind="timeout") == 1


def test_5xx_are_retried_with_backoff(server: FakeChatServer) -> None:
    server.push(
        [Reply(status=500, body="boom"), Reply(status=503, body="busy"), Reply(content=GOOD)]
    )
    slept: list[float] = []
    s = settings(server.url, retry_backoff_s=0.5)
    ex, _ = facade(s, sleep=slept.append)
    assert ex.extract(candidate()).pattern.extractor == "llm"
    assert len(server.requests) == 3
    assert slept == [0.5, 1.0]


def test_retries_are_bounded(server: FakeChatServer) -> None:
    server.push([Reply(status=502, body="bad gateway")] * 5)
    ex, registry = facade(settings(server.url, max_retries=2))
    assert ex.extract(candidate()).llm_error == "http_5xx"
    assert len(server.requests) == 3
    assert value(registry, "learnstream_extract_llm_failures_total", kind="http_5xx") == 1


def test_4xx_is_not_retried(server: FakeChatServer) -> None:
    server.push([Reply(status=401, body='{"error": "bad key"}')])
    ex, _ = facade(settings(server.url))
    assert ex.extract(candidate()).llm_error == "http_4xx"
    assert len(server.requests) == 1


def test_response_format_rejected_once_then_dropped(server: FakeChatServer) -> None:
    server.push(
        [
            Reply(status=400, body='{"error": {"message": "response_format is not supported"}}'),
            Reply(content=GOOD),
            Reply(content=GOOD),
        ]
    )
    ex, _ = facade(settings(server.url, max_retries=0))
    assert ex.extract(candidate("e1")).pattern.extractor == "llm"
    assert ex.extract(candidate("e2")).pattern.extractor == "llm"
    assert [("response_format" in r.body) for r in server.requests] == [True, False, False]


def test_not_a_chat_completion(server: FakeChatServer) -> None:
    server.push([Reply(body='{"hello": "world"}')])
    ex, _ = facade(settings(server.url))
    assert ex.extract(candidate()).llm_error == "bad_response"


def test_endpoint_down_opens_the_circuit_and_nothing_is_lost() -> None:
    s = settings(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, breaker_failure_threshold=2)
    ex, registry = facade(s)
    started = time.monotonic()
    results = [ex.extract(candidate(f"e{n}", query=f"How do I do thing {n}?")) for n in range(6)]
    assert time.monotonic() - started < 3
    assert [r.pattern.extractor for r in results] == ["heuristic"] * 6
    assert [r.pattern.source_event_ids for r in results] == [[f"e{n}"] for n in range(6)]
    assert [r.llm_error for r in results] == ["transport"] * 2 + ["circuit_open"] * 4
    assert ex.llm is not None and ex.llm.breaker.state is BreakerState.OPEN
    assert value(registry, "learnstream_extract_llm_circuit_state") == 2
    assert value(registry, "learnstream_extract_llm_failures_total", kind="circuit_open") == 4
    assert value(registry, "learnstream_extract_llm_fallbacks_total") == 6


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_half_open_recovery(server: FakeChatServer) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = ExtractMetrics.on(registry)
    breaker = CircuitBreaker(
        1, 10.0, clock=clock, on_change=lambda state: metrics.set_circuit(state.value)
    )
    s = settings(server.url, max_retries=0)
    ex = Extractor(s, metrics, LLMExtractor(s, breaker=breaker))
    server.push([Reply(status=500, body="down"), Reply(status=500, body="still down")])

    assert ex.extract(candidate("e1")).llm_error == "http_5xx"
    assert breaker.state is BreakerState.OPEN
    assert ex.extract(candidate("e2")).llm_error == "circuit_open"
    assert len(server.requests) == 1  # an open circuit sends nothing

    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert ex.extract(candidate("e3")).llm_error == "http_5xx"  # the trial fails: open again
    assert breaker.state is BreakerState.OPEN
    assert ex.extract(candidate("e4")).llm_error == "circuit_open"

    clock.now += 10
    result = ex.extract(candidate("e5"))  # trial succeeds (default reply): closed
    assert result.pattern.extractor == "llm" and result.llm_error is None
    assert breaker.state is BreakerState.CLOSED
    assert value(registry, "learnstream_extract_llm_circuit_state") == 0
    assert len(server.requests) == 3


def test_half_open_allows_one_trial_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.record_failure()
    assert breaker.allow() and breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    assert not breaker.allow()  # the trial is in flight
    breaker.record_success()
    assert breaker.allow() and breaker.allow()


def test_llm_extractor_raises_typed_errors(server: FakeChatServer) -> None:
    server.push([Reply(status=404, body="no such route")])
    llm = LLMExtractor(settings(server.url))
    with pytest.raises(LLMError) as err:
        llm.extract(candidate())
    assert err.value.kind == "http_4xx"
    llm.close()


def test_parse_is_lenient_about_shapes() -> None:
    f = parse_pattern_fields(
        'Here you go: {"name": " Use  a HashMap ", "description": "Count words with entry().",'
        ' "steps": "one step", "tags": ["rust", 3], "prerequisites": null,'
        ' "example": "", "extra": 1} thanks'
    )
    assert f.name == "Use a HashMap"
    assert f.steps == ["one step"]
    assert f.tags == ["rust", "3"]
    assert f.prerequisites == []
    assert f.example is None
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_pattern_fields("[1]")
    with pytest.raises(ValueError, match="invalid fields: name"):
        parse_pattern_fields('{"name": "x", "description": "long enough text"}')


def test_prompt_is_versioned_package_data() -> None:
    prompt = load_prompt("v1")
    assert "JSON object" in prompt and '"name"' in prompt
    with pytest.raises(FileNotFoundError):
        load_prompt("v0")
