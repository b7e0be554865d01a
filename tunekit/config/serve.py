"""The `serve` section: what `tunekit serve` serves and how (also the shape of a serving YAML file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunekit.config.common import RecipePath, Section


class ServedEntry(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="The id clients send as `model`.")
    path: RecipePath = Field(description="A run directory, an adapter directory or a model directory.")
    system_prompt: str | None = Field(
        None, description="Used when a request brings no system message (default: the run's data.system_prompt)."
    )


class ServeConfig(Section):
    backend: Literal["hf", "llamacpp", "vllm"] = Field(
        "hf",
        description="Engine behind the API: hf (transformers + PEFT), llamacpp (GGUF files on llama.cpp), "
        "vllm (a `vllm serve` subprocess, or `upstream_url`, behind tunekit's gateway).",
    )
    gguf: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+$",
        description="llamacpp: which of a run's exported GGUF types to serve (F16, Q8_0, ...); unset: the smallest one "
        "that passed the quantization gate.",
    )
    upstream_url: str | None = Field(
        None, pattern=r"^https?://", description="vllm: an OpenAI-compatible server already running (its /v1 URL) to forward to "
        "instead of starting `vllm serve`.",
    )
    vllm_args: list[str] = Field(default_factory=list, description="vllm: extra arguments for `vllm serve` (e.g. --max-model-len 4096).")
    upstream_start_timeout_s: float = Field(900.0, gt=0, description="vllm: how long `vllm serve` may take to become healthy.")
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
    burst: int | None = Field(None, gt=0, description="Requests a key may send at once after being idle; default: one minute's worth.")
    max_concurrent: int | None = Field(None, gt=0, description="Requests in flight at once per key; unset: no limit.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body in bytes (413 above it).")
    max_prompt_tokens: int | None = Field(None, gt=0, description="Longest prompt in tokens (400 above it); unset: the context.")
    max_prompt_chars: int | None = Field(None, gt=0, description="Longest prompt in characters (400 above it); unset: no limit.")
    allow_open_remote: bool = Field(False, description="Allow a server without API keys on an interface other than loopback.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take (504 after it).")
    request_log: RecipePath | None = Field(None, description="SQLite file of one row per completion; unset: no log.")
    log_content: bool = Field(False, description="Also log prompts and answers (PII scrubbed) in the request log.")

    @model_validator(mode="after")
    def _backend_options(self) -> "ServeConfig":
        # An option of another backend would be silently ignored: say so instead.
        if self.gguf is not None and self.backend != "llamacpp":
            raise ValueError(f"gguf: only used by backend llamacpp (backend is {self.backend})")
        if (self.upstream_url is not None or self.vllm_args) and self.backend != "vllm":
            raise ValueError(f"upstream_url / vllm_args: only used by backend vllm (backend is {self.backend})")
        return self
