"""Request and response models of the OpenAI chat and text completions APIs, streaming included.

Requests are validated strictly: a key OpenAI does not know is rejected, as OpenAI itself does
("Unrecognized request argument supplied"). Real OpenAI parameters this server does not implement
are accepted only at their neutral value (e.g. `n: 1`, `presence_penalty: 0`), so a client never
gets an answer computed differently from what it asked for without being told.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# `developer` is OpenAI's newer name for the system role; both mean the same to a chat template.
ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _content_text(value: Any) -> Any:
    """Accept a string or OpenAI's list of content parts; join text parts, refuse other kinds."""
    if not isinstance(value, list):
        return value
    texts = []
    for index, part in enumerate(value):
        if not isinstance(part, dict) or "type" not in part:
            raise ValueError(f"content part {index} must be an object with a `type`")
        if part["type"] != "text":
            raise ValueError(f"content part {index} has type '{part['type']}'; this server accepts text only")
        if set(part) - {"type", "text"} or not isinstance(part.get("text"), str):
            raise ValueError(f"content part {index} must look like {{\"type\": \"text\", \"text\": \"...\"}}")
        texts.append(part["text"])
    return "".join(texts)


class ChatMessage(_Strict):
    role: str = Field(description="system (or developer), user or assistant.")
    content: str = Field(description="Message text, or a list of text parts (joined).")
    name: str | None = Field(None, description="Participant name; accepted and ignored.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_tools(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(key) for key in ("tool_calls", "function_call")):
            raise ValueError("tool and function calls are not supported by this server")
        if isinstance(data, dict):
            # Dropped so that a tool message is refused for its role alone, in one clear error.
            data = {k: v for k, v in data.items() if k not in ("tool_calls", "function_call", "tool_call_id")}
        return data

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLE_ALIASES:
            raise ValueError(f"role '{role}' is not supported; use system, user or assistant (this server has no tool calling)")
        return ROLE_ALIASES[role]

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, value: Any) -> Any:
        return _content_text(value)


def _neutral(name: str, value: Any, neutral: tuple) -> Any:
    if value is not None and value not in neutral:
        raise ValueError(f"`{name}` is not supported by this server (only {neutral[0]!r} is accepted)")
    return value


MAX_CHOICES = 8


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks; nothing to hide on loopback


class ChatCompletionRequest(_Strict):
    model: str = Field(description="A model name from /v1/models.")
    messages: list[ChatMessage] = Field(description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default 1.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    stop: list[str] | None = Field(None, description="A string or up to 4 strings; the answer ends before the first one.")
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    stream: bool | None = Field(None, description="Send the answer as server-sent events, chunk by chunk.")
    stream_options: StreamOptions | None = Field(None, description="With stream: include_usage adds a last chunk with usage.")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description=f"Choices to generate (1 to {MAX_CHOICES}).")
    # Real OpenAI parameters without effect here; accepted so common clients work unchanged.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None
    # Real OpenAI parameters that would change the answer: accepted only at their neutral value.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("must hold at least one message")
        return messages

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        # One type (a list) instead of a union, so a wrong value gets one error, not one per branch.
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, stops: list[str] | None) -> list[str] | None:
        if stops is None:
            return None
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @model_validator(mode="after")
    def _neutral_values(self) -> "ChatCompletionRequest":
        _neutral("frequency_penalty", self.frequency_penalty, (0, 0.0))
        _neutral("presence_penalty", self.presence_penalty, (0, 0.0))
        _neutral("logprobs", self.logprobs, (False,))
        _neutral("top_logprobs", self.top_logprobs, (0,))
        if self.logit_bias:
            raise ValueError("`logit_bias` is not supported by this server")
        if self.response_format and self.response_format.get("type") != "text":
            raise ValueError("`response_format` is not supported by this server (only {'type': 'text'})")
        if self.tools or self.functions or self.tool_choice not in (None, "none") or self.function_call not in (None, "none"):
            raise ValueError("tool and function calling are not supported by this server")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; pass only one of them")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---------------------------------------------------------------- responses


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


FinishReason = Literal["stop", "length"]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionRequest(_Strict):
    """OpenAI's legacy /v1/completions: raw text in, text out (no chat template)."""

    model: str
    prompt: str | list[str] = Field(description="The text to continue (one prompt; a list of one is accepted).")
    max_tokens: int | None = Field(16, ge=1, description="Most tokens to generate (OpenAI's default is 16).")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    echo: bool | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None

    _stop_list = field_validator("stop", mode="before")(ChatCompletionRequest._stop_list.__func__)
    _stop_limits = field_validator("stop")(ChatCompletionRequest._stop_limits.__func__)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"send one prompt per request (got a list of {len(value)})")
            value = value[0]
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _neutral_values(self) -> "CompletionRequest":
        _neutral("frequency_penalty", self.frequency_penalty, (0, 0.0))
        _neutral("presence_penalty", self.presence_penalty, (0, 0.0))
        _neutral("logprobs", self.logprobs, (0,))
        _neutral("best_of", self.best_of, (1,))
        _neutral("echo", self.echo, (False,))
        _neutral("suffix", self.suffix, ("",))
        if self.logit_bias:
            raise ValueError("`logit_bias` is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class LoadAdapterRequest(_Strict):
    """vLLM's /v1/load_lora_adapter body."""

    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    lora_path: str = Field(min_length=1)
    system_prompt: str | None = None


class UnloadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM sends it; names are what tunekit goes by


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunekit"
    root: str | None = None  # where the weights came from
    parent: str | None = None  # for an adapter: the base model's id


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
