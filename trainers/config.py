"""Settings of the training loop (``LEARNSTREAM_TRAINING__*``).

Plain pydantic: no torch or transformers import, so the CLI and the settings stay light.
List settings are JSON in the environment, e.g.
``LEARNSTREAM_TRAINING__VLLM_SERVERS='["http://vllm:8000"]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainingSettings(BaseModel):
    """LoRA fine-tuning, evaluation, promotion and hot-swap."""

    model_config = ConfigDict(extra="forbid")

    # --- LoRA -----------------------------------------------------------------------------
    lora_rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (scale = alpha / rank).")
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description='Module names to adapt, or ["all-linear"] for every linear layer but the head.',
    )

    # --- SFT ------------------------------------------------------------------------------
    epochs: float = Field(default=3.0, gt=0, description="Passes over the train split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (tests, demo)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=16, description="Tokens per example (truncated).")
    loss_on: Literal["assistant", "all"] = Field(
        default="assistant",
        description=(
            "Tokens that carry the loss in training and evaluation: the assistant's replies "
            "(needs a chat template with {% generation %} markers or one trl can patch; falls "
            "back to 'all' with a warning otherwise) or every token."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for memory (large base models)."
    )
    seed: int = Field(default=42, description="Seeds the split, LoRA init and data order.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda when available, else cpu."
    )
    bf16: bool | Literal["auto"] = Field(
        default="auto", description="auto: bf16 on a GPU that supports it; never on cpu."
    )

    # --- data and promotion ---------------------------------------------------------------
    eval_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Share of source queries held out for eval."
    )
    min_train_examples: int = Field(
        default=1, ge=1, description="Fewer train examples: the run is skipped."
    )
    min_eval_examples: int = Field(
        default=10,
        ge=1,
        description="Fewer eval examples: the run is skipped and nothing is ever promoted.",
    )
    min_improvement: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description=(
            "Promote only if candidate loss <= active loss * (1 - this) (relative), and the "
            "lower bound of the bootstrap interval of the improvement is at least this too."
        ),
    )
    bootstrap_resamples: int = Field(
        default=2000,
        ge=100,
        le=100_000,
        description="Paired bootstrap resamples of the eval examples (seeded by `seed`).",
    )
    bootstrap_confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="Two-sided confidence of the bootstrap interval of the improvement.",
    )
    golden_set: bool = Field(
        default=True,
        description=(
            "Evaluate on the golden set too and reject a candidate that is worse on it. "
            "Off: the eval split alone decides."
        ),
    )
    golden_path: Path | None = Field(
        default=None,
        description=(
            "The golden set: a JSONL of chat examples curated by the user, never drawn from the "
            "dataset. Unset: the sample shipped in evals/golden.jsonl (skipped with a warning "
            "when the installation has none). A path that does not exist fails the job."
        ),
    )
    max_golden_regression: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Relative golden-set loss increase tolerated: reject if candidate > active * "
            "(1 + this)."
        ),
    )
    registry_dir: Path | None = Field(
        default=None, description="Adapter registry folder. Unset: <data dir>/adapters."
    )

    # --- hot-swap -------------------------------------------------------------------------
    vllm_servers: list[str] = Field(
        default_factory=list,
        description="vLLM base URLs (http://host:8000) told to reload the adapter on promotion.",
    )
    webhooks: list[str] = Field(
        default_factory=list, description="URLs POSTed a JSON notice on every promotion."
    )
    lora_name: str = Field(
        default="learnstream",
        min_length=1,
        description="Name under which vLLM serves the active adapter (clients use it as model).",
    )
    served_registry_dir: Path | None = Field(
        default=None,
        description="The registry folder as the inference servers see it (unset: the same path).",
    )
    hotswap_retries: int = Field(default=3, ge=0, le=20, description="Retries per server.")
    hotswap_backoff_s: float = Field(
        default=0.5, ge=0.0, description="First retry delay; doubles each retry."
    )
    hotswap_timeout_s: float = Field(default=10.0, gt=0, description="Per HTTP request.")

    @field_validator("vllm_servers", "webhooks")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return urls

    @field_validator("vllm_servers")
    @classmethod
    def _base_urls(cls, urls: list[str]) -> list[str]:
        return [url.rstrip("/") for url in urls]
