"""The `export` section: merged model, GGUF files with their quantization gate, the Ollama Modelfile."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunekit.config.common import RecipePath, Section


ExportFormat = Literal["merged", "gguf", "ollama"]
# File types llama.cpp can write (its `llama-quantize` names). F32/F16/BF16/Q8_0 come straight from the
# converter; every other type is quantized from the F16 file through llama-cpp-python.
GGUF_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
    "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)


def _canonical_gguf_type(name: str) -> str:
    wanted = str(name).strip().upper()
    if wanted not in GGUF_TYPES:
        close = difflib.get_close_matches(wanted, GGUF_TYPES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(GGUF_TYPES)})"
        raise ValueError(f"unknown GGUF type '{name}'{hint}")
    return wanted


class GgufExportConfig(Section):
    types: list[str] = Field(
        default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"],
        description="GGUF files to write (any case): F16/BF16/Q8_0/F32 are converted from the merged model, "
        "other llama.cpp types (Q4_K_M, Q5_K_M, Q6_K, ...) are quantized from the F16 file, which is always written.",
    )
    check_parity: bool = Field(True, description="Run the test prompts greedily through the merged HF model and the F16 GGUF and compare.")
    parity_prompts: int = Field(50, gt=0, description="Test (else validation) prompts used by the GGUF parity check.")
    min_parity: float = Field(
        0.9, ge=0.0, le=1.0, description="Fail the export when a smaller share of greedy outputs is identical (a template or stop-token mismatch always fails)."
    )
    perplexity_text: RecipePath | None = Field(
        None, description="Plain-text file for the quantization perplexity gate (default: the test split rendered with the chat template)."
    )
    perplexity_max_tokens: int = Field(
        4096,
        gt=1,
        description="Score at most this many tokens of the perplexity text. Files are compared on the same tokens: on the "
        "example, 4096 tokens moved each increase by under 0.1 points from 8192 in half the time (bench/perplexity_sample.py).",
    )
    perplexity_context: int = Field(512, gt=1, description="Window (tokens) in which the perplexity text is scored.")
    max_ppl_increase: dict[str, float] = Field(
        default_factory=dict,
        description="Gate per quantized type, in % perplexity increase over F16 (e.g. {Q4_K_M: 15}); a type over its gate is "
        "blocked: its file is removed and no Modelfile points at it. Types not listed use `default_max_ppl_increase`.",
    )
    default_max_ppl_increase: float | None = Field(
        30.0, ge=0.0, description="Gate for types not in `max_ppl_increase` (30: block 'degraded' files; null: no gate)."
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_canonical_gguf_type(t) for t in value))

    @field_validator("max_ppl_increase")
    @classmethod
    def _known_gated_types(cls, value: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in value.values()):
            raise ValueError("a perplexity-increase gate must be >= 0 (%)")
        return {_canonical_gguf_type(k): v for k, v in value.items()}


OLLAMA_PARAMETERS = (
    "temperature", "top_p", "top_k", "min_p", "num_ctx", "num_predict", "repeat_penalty", "repeat_last_n", "seed", "stop",
)


class OllamaExportConfig(Section):
    model_name: str | None = Field(None, description="Name given to `ollama create` (default: the run name).")
    gguf: str | None = Field(
        None, description="GGUF type the Modelfile's FROM uses (default: the smallest file that passed the quantization gate)."
    )
    system: str | None = Field(None, description="SYSTEM line (default: data.system_prompt, else the chat template's own default).")
    parameters: dict[str, float | int | str | list[str]] = Field(
        default_factory=dict, description=f"Extra PARAMETER lines, e.g. {{temperature: 0}}. Keys: {', '.join(OLLAMA_PARAMETERS)}."
    )

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(OLLAMA_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown Ollama parameter(s) {', '.join(unknown)} (known: {', '.join(OLLAMA_PARAMETERS)})")
        return value

    @field_validator("gguf")
    @classmethod
    def _known_gguf(cls, value: str | None) -> str | None:
        return None if value is None else _canonical_gguf_type(value)


class ExportConfig(Section):
    adapter: bool = Field(True, description="Write the PEFT adapter directory.")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["merged"],
        description="What to build: `merged` (safetensors model), `gguf` (llama.cpp files, extra tunekit[gguf]), "
        "`ollama` (Modelfile; implies gguf). Every format starts from the merged model. []: adapter copy only.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype of the merged model.")
    check_parity: bool = Field(True, description="Check that the merged model generates what base + adapter generates.")
    gguf: GgufExportConfig = Field(default_factory=GgufExportConfig, description="GGUF types, parity check and quantization gate.")
    ollama: OllamaExportConfig = Field(default_factory=OllamaExportConfig, description="The Ollama Modelfile.")

    @model_validator(mode="after")
    def _ollama_file_is_exported(self) -> "ExportConfig":
        wanted = self.ollama.gguf
        if wanted is not None and wanted not in {"F16", *self.gguf.types}:
            raise ValueError(f"ollama.gguf: {wanted} is not among export.gguf.types ({', '.join(self.gguf.types)})")
        return self

    @property
    def writes_gguf(self) -> bool:
        return "gguf" in self.formats or "ollama" in self.formats

    @property
    def writes_merged(self) -> bool:
        return bool(self.formats)
