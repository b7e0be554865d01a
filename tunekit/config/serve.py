"""The `serve` section: what `tunekit serve` serves and how (also the shape of a serving YAML file)."""

from __future__ import annotations

from pydantic import Field

from tunekit.config.common import RecipePath, Section


class ServedEntry(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="The id clients send as `model`.")
    path: RecipePath = Field(description="A run directory, an adapter directory or a model directory.")
    system_prompt: str | None = Field(
        None, description="Used when a request brings no system message (default: the run's data.system_prompt)."
    )


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, gt=0, lt=65536, description="TCP port.")
    max_new_tokens: int = Field(256, gt=0, description="Default and upper bound for `max_tokens` in requests.")
    base_model: str | None = Field(None, description="The base model to serve (default: the base the served adapters share).")
    models: list[ServedEntry] = Field(default_factory=list, description="Runs / adapters / models to serve, by name.")
    adapter_roots: list[RecipePath] = Field(
        default_factory=list,
        description="Folders under which POST /v1/load_lora_adapter may load adapters; empty: run-time loading is off.",
    )
    max_batch_size: int = Field(8, gt=0, le=256, description="Requests decoded together at most.")
    batch_wait_ms: float = Field(10.0, ge=0, le=1000, description="How long the first request of a batch waits for company.")
    keys_file: RecipePath | None = Field(None, description="YAML/JSON file of API keys (id, key or key_sha256, role, limits).")
    rate_per_min: float | None = Field(None, gt=0, description="Requests per minute per key; unset: no limit.")
    max_concurrent: int | None = Field(None, gt=0, description="Requests in flight at once per key; unset: no limit.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body in bytes (413 above it).")
    max_prompt_tokens: int | None = Field(None, gt=0, description="Longest prompt in tokens (400 above it); unset: the context.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take (504 after it).")
    request_log: RecipePath | None = Field(None, description="SQLite file of one row per completion; unset: no log.")
    log_content: bool = Field(False, description="Also log prompts and answers (PII scrubbed) in the request log.")
