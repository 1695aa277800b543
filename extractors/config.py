"""Settings of the pattern-extraction stage (``LEARNSTREAM_EXTRACT__*``).

Every field maps to one environment variable, e.g. ``LEARNSTREAM_EXTRACT__LLM_BASE_URL`` or
``LEARNSTREAM_EXTRACT__MERGE_THRESHOLD``. Without ``llm_base_url`` only the deterministic
heuristic extractor runs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_SYSTEM_PROMPT = (
    "You are a senior software engineer. Answer coding and operations questions with a short "
    "explanation and working, idiomatic code."
)


class ExtractSettings(BaseModel):
    """Pattern extraction: LLM endpoint, heuristic fallback, merge, dataset."""

    model_config = ConfigDict(extra="forbid")

    llm_base_url: str | None = Field(
        default=None,
        description=(
            "OpenAI-compatible API base, e.g. http://127.0.0.1:8080/v1 (llama.cpp, Ollama, vLLM);"
            " requests go to <base>/chat/completions. Unset: heuristic extractor only."
        ),
    )
    llm_model: str = Field(
        default="local", min_length=1, description="Model name sent in each request."
    )
    llm_api_key: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Bearer <key>' when set."
    )
    temperature: float = Field(default=0.1, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=1024, ge=64, le=32_768, description="Completion token cap.")
    json_mode: bool = Field(
        default=True,
        description=(
            "Ask for response_format json_object; dropped automatically when the server "
            "rejects it with a 400."
        ),
    )
    timeout_s: float = Field(default=60.0, gt=0, le=600, description="Per-request timeout.")
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on transport errors, timeouts, 429 and 5xx."
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, le=60, description="First retry delay; doubles each retry."
    )
    max_input_chars: int = Field(
        default=12_000, ge=500, le=1_000_000, description="Query + response sent to the LLM."
    )
    breaker_failure_threshold: int = Field(
        default=5, ge=1, le=1000, description="Consecutive failed calls that open the circuit."
    )
    breaker_reset_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds the circuit stays open before one trial call (half-open).",
    )
    concurrency: int = Field(
        default=4, ge=1, le=64, description="Candidates extracted in parallel per batch."
    )
    batch_size: int = Field(default=16, ge=1, description="Candidates taken per agent batch.")
    batch_within_s: float = Field(
        default=0.5, gt=0, description="Longest wait to fill a batch of candidates."
    )
    merge_threshold: float = Field(
        default=0.95,
        ge=0.5,
        le=1.0,
        description="Cosine (name + description) at or above which a new pattern is merged.",
    )
    dataset_path: Path | None = Field(
        default=None, description="The JSONL dataset. Unset: <data dir>/dataset/dataset.jsonl."
    )
    gate: bool = Field(
        default=True,
        description=(
            "The substance gate: refuse candidates without reusable content (filler, "
            "refusals, echoes...) before they become patterns or examples."
        ),
    )
    gate_min_informative_tokens: int = Field(
        default=8,
        ge=1,
        le=1000,
        description=(
            "Informative words beyond the question that a prose-only answer (no code, "
            "commands or steps) needs to pass the gate."
        ),
    )
    gate_max_repetition: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Share of repeated sentences from which a prose answer is refused.",
    )
    gate_max_echo_overlap: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Share of the answer's informative words taken from the question (echo).",
    )
    max_examples_per_pattern: int = Field(
        default=8, ge=1, description="Dataset examples kept per pattern (after merging)."
    )
    max_near_duplicates: int = Field(
        default=2,
        ge=1,
        description=(
            "Dataset examples kept with a near-identical answer to the same question in other "
            "words; further ones are skipped."
        ),
    )
    near_duplicate_answer_similarity: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard (word 3-shingles) from which answers are near-identical.",
    )
    near_duplicate_query_similarity: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Cosine of the query embeddings from which two questions are paraphrases.",
    )
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        min_length=1,
        description="System message of every dataset example.",
    )

    @field_validator("llm_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value
