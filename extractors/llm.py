"""LLM extractor: any OpenAI-compatible chat-completions endpoint (llama.cpp, Ollama, vLLM).

One candidate -> one request (low temperature, ``response_format: json_object``; dropped for good
when the server answers 400 about it) -> the JSON object validated into `Pattern` fields, or the
no-pattern object (``{"pattern": null, "reason": ...}``: the model finds no reusable content;
`NoPattern`, an answer rather than a failure: no repair, no fallback). Invalid output gets one
repair request that sends the error back. Transport errors, timeouts, 429 and
5xx are retried with exponential backoff (bounded); a circuit breaker stops calling a dead
endpoint so the stream falls back to the heuristic extractor without waiting on timeouts.

The prompt is ``extractors/prompts/extract_<PROMPT_VERSION>.txt``; each pattern records
``extractor="llm"``, the model, the prompt version and the latency.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from functools import cache
from importlib.resources import files
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from extractors.heuristic import example_from
from extractors.patterns import (
    MAX_EXAMPLE_CHARS,
    MAX_PREREQUISITES,
    MAX_STEPS,
    clean_tags,
    pattern_id_for,
    source_query,
)
from learnstream.core.settings import ExtractSettings
from schemas.interaction import ScoredInteraction
from schemas.pattern import Pattern

log = logging.getLogger("learnstream.extract.llm")

PROMPT_VERSION = "v1"
MAX_BACKOFF_S = 30.0
REPAIR_INSTRUCTION = (
    "Your reply could not be used: {error}\n"
    "Reply again with only the JSON object described above: keys name, description, "
    "prerequisites, steps, tags, example (or the no-pattern object with pattern null and a "
    "reason); valid JSON, no markdown fences, no other text."
)
MAX_REASON_CHARS = 300


@cache
def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The system prompt of a prompt version, from the package data."""
    return files("extractors.prompts").joinpath(f"extract_{version}.txt").read_text("utf-8")


class LLMError(Exception):
    """An LLM extraction that failed; ``kind`` labels the failure metric.

    Kinds: ``circuit_open``, ``timeout``, ``transport``, ``http_5xx``, ``rate_limited``,
    ``http_4xx``, ``bad_response`` (not a chat completion), ``invalid_output`` (no valid pattern
    JSON even after the repair request).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class NoPattern(Exception):  # noqa: N818 - an answer, not an error
    """The LLM answered that the candidate carries no reusable content, with its reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BreakerState(StrEnum):
    """States of the circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures -> half-open after
    ``reset_s`` (one trial call at a time) -> closed on success, open again on failure.
    Thread-safe; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            log.warning("LLM circuit %s -> %s", self._state.value, state.value)
            self._state = state
            if self._on_change:
                self._on_change(state)

    @property
    def state(self) -> BreakerState:
        """The current state (an open circuit past its reset time reads as half-open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_s:
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open, only one trial call at a time."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self._clock() - self._opened_at < self.reset_s:
                    return False
                self._set(BreakerState.HALF_OPEN)
                self._trial = False
            if self._trial:
                return False
            self._trial = True
            return True

    def record_success(self) -> None:
        """The endpoint answered: close the circuit."""
        with self._lock:
            self._failures = 0
            self._trial = False
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A call failed: open the circuit at the threshold, or at once when half-open."""
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
            ):
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)


def _as_str_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, str | int | float):
                out.append(str(item))
            elif isinstance(item, dict):  # {"step": "..."} and the like
                out.extend(str(v) for v in item.values() if isinstance(v, str | int | float))
        return out
    return value


class LLMPatternFields(BaseModel):
    """The JSON object the prompt asks for; lenient about shapes, strict about content."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=3)
    description: str = Field(min_length=10)
    prerequisites: list[str] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    example: str | None = None

    @field_validator("name", "description", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return " ".join(value.split()) if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return value[:200]

    @field_validator("prerequisites", "steps", "tags", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_str_list(value)

    @field_validator("prerequisites", "steps", "tags")
    @classmethod
    def _strip(cls, value: list[str]) -> list[str]:
        return [" ".join(v.split()) for v in value if v.strip()]

    @field_validator("example", mode="before")
    @classmethod
    def _example(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value


_FENCED_JSON = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL | re.IGNORECASE)


def parse_pattern_fields(content: str) -> LLMPatternFields:
    """The pattern fields in a reply: a JSON object, possibly in a fence or amid text.

    Raises `NoPattern` when the reply is the no-pattern object (``{"pattern": null, "reason":
    ...}``, or ``"no_pattern": true``), ValueError (with a message fit to send back to the
    model) when there is no usable object.
    """
    text = content.strip()
    fenced = _FENCED_JSON.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(f"not JSON ({exc.msg} at position {exc.pos})") from None
        try:
            data = json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc2:
            raise ValueError(f"not valid JSON ({exc2.msg} at position {exc2.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if ("pattern" in data and data["pattern"] is None) or data.get("no_pattern") is True:
        reason = " ".join(str(data.get("reason") or "no reason given").split())
        raise NoPattern(reason[:MAX_REASON_CHARS])
    try:
        return LLMPatternFields.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'object'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(f"invalid fields: {problems}") from None


def render_candidate(candidate: ScoredInteraction, max_chars: int) -> str:
    """The user message describing a (redacted) candidate, at most about ``max_chars``."""
    i = candidate.interaction
    query_budget = max(200, max_chars // 4)
    query = (i.query or "").strip()[:query_budget]
    response = (i.response or "").strip()[: max(200, max_chars - len(query))]
    lines = [f"Source: {i.source.value} ({i.event_type})"]
    outcome = f"Outcome: {i.outcome.value}"
    if i.iterations is not None:
        outcome += f" after {i.iterations} iteration(s)"
    if candidate.score is not None:
        outcome += f"; value score {candidate.score:.2f}"
    lines.append(outcome)
    if i.tools_used:
        lines.append("Tools used: " + ", ".join(i.tools_used[:20]))
    if i.files_modified:
        lines.append("Files modified: " + ", ".join(i.files_modified[:20]))
    lines += ["", "## Request", query or "(none)", "", "## Response", response or "(none)"]
    return "\n".join(lines)


class LLMExtractor:
    """Extracts patterns through a chat-completions endpoint; thread-safe (one shared client)."""

    def __init__(
        self,
        settings: ExtractSettings,
        *,
        breaker: CircuitBreaker | None = None,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not settings.llm_base_url:
            raise ValueError("LLMExtractor needs LEARNSTREAM_EXTRACT__LLM_BASE_URL")
        self.settings = settings
        self.url = settings.llm_base_url + "/chat/completions"
        self.model = settings.llm_model
        self.breaker = breaker or CircuitBreaker(
            settings.breaker_failure_threshold, settings.breaker_reset_s
        )
        self.json_mode = settings.json_mode
        self.prompt = load_prompt(PROMPT_VERSION)
        self._on_retry = on_retry
        self._sleep = sleep
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.llm_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=max(4, settings.concurrency * 2)),
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def available(self) -> bool:
        """False while the circuit is open (a call now would be refused)."""
        return self.breaker.state is not BreakerState.OPEN

    def _request(self, messages: list[dict[str, str]]) -> str:
        """One chat completion with retries; the reply's text content."""
        s = self.settings
        attempt = 0
        last: LLMError | None = None
        resend_now = False
        while attempt <= s.max_retries:
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "temperature": s.temperature,
                "max_tokens": s.max_tokens,
                "stream": False,
            }
            if self.json_mode:
                body["response_format"] = {"type": "json_object"}
            if attempt and not resend_now:
                delay = min(s.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if self._on_retry and last is not None:
                    self._on_retry(last.kind)
                log.info("LLM retry %d in %.2fs after %s", attempt, delay, last)
                self._sleep(delay)
            attempt += 1
            resend_now = False
            try:
                resp = self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last = LLMError("timeout", f"no answer within {s.timeout_s}s ({exc!r})")
                continue
            except httpx.HTTPError as exc:  # connect/read/write/protocol errors and the like
                last = LLMError("transport", repr(exc))
                continue
            if resp.status_code == 400 and self.json_mode and "response_format" in resp.text:
                log.warning("LLM server rejects response_format; asking without it from now on")
                self.json_mode = False
                attempt -= 1  # not a failure of the endpoint: send again at once
                resend_now = True
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                kind = "rate_limited" if resp.status_code == 429 else "http_5xx"
                last = LLMError(kind, f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            if resp.status_code >= 400:
                raise LLMError("http_4xx", f"HTTP {resp.status_code}: {resp.text[:200]}")
            return self._content(resp)
        assert last is not None
        raise last

    @staticmethod
    def _content(resp: httpx.Response) -> str:
        try:
            data = resp.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                "bad_response", f"not a chat completion ({exc!r}): {resp.text[:200]}"
            ) from None
        if not isinstance(content, str):
            raise LLMError("bad_response", "message content is not a string")
        return content

    def _call(self, messages: list[dict[str, str]]) -> str:
        """A request counted by the circuit breaker."""
        try:
            content = self._request(messages)
        except Exception:  # LLMError, or anything unexpected: never leave a trial hanging
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return content

    def extract(self, candidate: ScoredInteraction) -> Pattern:
        """The pattern of a (redacted) candidate; `NoPattern` when the model finds no reusable
        content in it; `LLMError` when extraction failed.

        At most two chat completions (the answer and one repair), each with bounded retries.
        """
        if not self.breaker.allow():
            raise LLMError("circuit_open", "the LLM circuit is open")
        started = time.perf_counter()
        messages = [
            {"role": "system", "content": self.prompt},
            {
                "role": "user",
                "content": render_candidate(candidate, self.settings.max_input_chars),
            },
        ]
        content = self._call(messages)
        try:
            fields = parse_pattern_fields(content)
        except ValueError as exc:
            log.info("LLM output unusable (%s); asking for a repair", exc)
            repair = [
                *messages,
                {"role": "assistant", "content": content[:4000]},
                {"role": "user", "content": REPAIR_INSTRUCTION.format(error=exc)},
            ]
            if not self.breaker.allow():
                raise LLMError("circuit_open", "the LLM circuit opened before the repair") from None
            content = self._call(repair)
            try:
                fields = parse_pattern_fields(content)
            except ValueError as exc2:
                raise LLMError("invalid_output", f"after one repair: {exc2}") from None
        latency_ms = (time.perf_counter() - started) * 1000
        return self._pattern(candidate, fields, latency_ms)

    def _pattern(
        self, candidate: ScoredInteraction, fields: LLMPatternFields, latency_ms: float
    ) -> Pattern:
        i = candidate.interaction
        query = source_query(i.query)
        example = fields.example or example_from(i.response)
        if example and len(example) > MAX_EXAMPLE_CHARS:
            example = example[:MAX_EXAMPLE_CHARS]
        return Pattern(
            pattern_id=pattern_id_for(query, fields.name),
            name=fields.name,
            description=fields.description,
            prerequisites=fields.prerequisites[:MAX_PREREQUISITES],
            steps=fields.steps[:MAX_STEPS],
            tags=clean_tags([i.source.value, *fields.tags]),
            example=example,
            source_query=query,
            source_event_ids=[i.event_id],
            created_at=i.timestamp,
            updated_at=i.timestamp,
            extractor="llm",
            extractor_model=self.model,
            prompt_version=PROMPT_VERSION,
            latency_ms=round(latency_ms, 3),
        )
