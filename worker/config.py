"""Deployment configuration: one settings class, read from LLM4RERANK_* variables and `.env`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The prompt sets: the repository's prompts/, shipped as the package data `worker.prompts`
# (pyproject.toml maps one onto the other, for editable and wheel installs alike).
PACKAGED_PROMPTS = Path(str(resources.files("worker.prompts")))


class Settings(BaseSettings):
    """Every knob of the service; the contract's names are the field names with the prefix."""

    model_config = SettingsConfigDict(env_prefix="LLM4RERANK_", env_file=".env", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/llm4rerank"
    reader_database_url: str | None = None

    llm_base_url: str | None = None
    llm_model: str = "meta-llama/Llama-2-13b-chat-hf"
    llm_api_key: str | None = None
    llm_structured: Literal["json_schema", "tgi", "json_object", "none"] = Field(
        "json_schema",
        description="answer format the server enforces: json_schema (OpenAI form: "
        "vLLM, SGLang, llama.cpp), tgi (TGI's grammar form), json_object (the schema beside "
        "json_object, llama-cpp-python), none (free text)",
    )
    llm_answer_shape: Literal["list", "keys"] = Field(
        "list",
        description="list: a ranking array of fixed length; keys: one required key per "
        "candidate holding its position",
    )
    llm_context_tokens: int | None = Field(
        None,
        ge=256,
        description="the model's context length; unset: max_model_len from /v1/models, else 4096",
    )
    llm_tokenizer: Path | None = Field(
        None,
        description="a SentencePiece tokenizer.model to count prompt tokens exactly; "
        "unset: a safe over-estimate",
    )
    llm_max_repair_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="a ranking whose model-given part misses more than this "
        "share of the candidates (appended in the previous order) is unusable",
    )
    llm_window: int = Field(
        20,
        ge=4,
        description="lists longer than this, or too long for the "
        "context, are reranked in sliding windows of this size",
    )
    llm_window_step: int = Field(10, ge=1, description="how far each window slides")
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_max_inflight: int = Field(64, ge=1)
    llm_max_tokens: int = Field(512, ge=16)
    llm_temperature: float = Field(0.0, ge=0)
    llm_reasks: int = Field(1, ge=0, le=3)
    llm_retry_max_wait_s: float = Field(5.0, gt=0)
    llm_breaker_failures: int = Field(
        5,
        ge=0,
        description="retryable LLM failures in a row after which calls wait for one probe at a time (0: off)",
    )
    llm_transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp",
        description="the openai client's HTTP transport: aiohttp (its `aiohttp` extra, far less CPU "
        "per call) or httpx (the client's default)",
    )

    request_topic: str = "rerank.requests"
    result_topic: str = "rerank.results"
    dlq_topic: str = "rerank.requests.dlq"
    consumer_group: str = "llm4rerank"
    kafka_session_timeout_s: float = Field(
        10.0, ge=3, description="how fast a dead worker's partitions move to a live one"
    )

    max_steps: int = Field(5, ge=1, le=50)
    deadline_ms: int = Field(30_000, ge=100)
    concurrency: int = Field(64, ge=1)
    outbox_rounds: int = Field(
        1,
        ge=1,
        le=16,
        description="outbox rounds in flight (PostgreSQL): above 1, a stored result is sent without "
        "waiting for the previous batch's acks, at the cost of more, smaller rounds (more CPU)",
    )
    inbox_batch: int = Field(
        64,
        ge=1,
        description="Kafka messages the inbox records per transaction (at most; the stream buffer "
        "and the byte budget bound it too)",
    )
    prompts: str = "default"
    prompts_dir: Path = PACKAGED_PROMPTS

    max_candidates: int = Field(100, ge=2)
    max_history: int = Field(200, ge=0)
    max_features: int = Field(64, ge=1)
    max_payload_bytes: int = Field(1_000_000, ge=1024)
    kafka_max_message_bytes: int = Field(
        1_000_000,
        ge=65_536,
        description="the producer's max_request_size; the broker's message.max.bytes (infra) is set above it",
    )
    dlq_payload_max_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="payload kept in a dead letter; a longer one is cut, with "
        "payload_truncated, payload_sha256 and payload_bytes",
    )
    inflight_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1_000_000,
        description="request bytes in flight per worker process; "
        "the consumer waits when they would exceed it",
    )
    prompt_field_max_chars: int = Field(
        500,
        ge=16,
        description="longest text of one request field in a prompt; longer is cut, with a note in the step",
    )

    aspects: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="deployment defaults per aspect node, e.g. "
        '{"diversity": {"attribute": "genre"}, "novelty": {"attribute": "genre"}}',
    )

    audit_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    audit_host: str = "127.0.0.1"
    audit_port: int = 8080
    metrics_port: int = 9464
    lease_s: float = Field(
        10.0,
        gt=1,
        description="a session's lease, renewed every third of it; "
        "a dead worker's sessions resume elsewhere within 1.5 leases",
    )
    crash_limit: int = Field(3, ge=1, description="walk crashes before a session is failed")
    shutdown_grace_s: float = Field(
        20.0,
        gt=0,
        description="SIGTERM: how long walks in flight may finish; the process exits within this plus 5 s",
    )
    state_dir: Path = Field(Path(".local/worker"), description="faust's local state folder")
    partition_interval: Literal["day", "month"] = Field(
        "day",
        description="the time range of one partition of sessions and steps (PostgreSQL); "
        "retention drops whole partitions",
    )
    partitions_ahead: int = Field(
        7,
        ge=1,
        le=366,
        description="partitions kept created ahead "
        "of now, by the worker (hourly), db partitions and retention",
    )

    @property
    def deployment(self) -> str:
        """Which worker fleet a session belongs to: it alone resumes and publishes it."""
        return f"{self.consumer_group}@{self.request_topic}"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with `changes` (None = keep), validated like the environment's values are
        (`model_copy(update=...)` would skip validation)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        return type(self).model_validate({**self.model_dump(), **given})

    @model_validator(mode="after")
    def _sizes_fit(self) -> Settings:
        if self.dlq_payload_max_bytes > self.kafka_max_message_bytes // 2:
            raise ValueError(
                "LLM4RERANK_DLQ_PAYLOAD_MAX_BYTES must be at most half of "
                "LLM4RERANK_KAFKA_MAX_MESSAGE_BYTES, so a dead letter always fits"
            )
        return self

    @field_validator("audit_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value
