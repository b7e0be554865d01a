"""What a cost report is computed from. Every figure may be given, read from a record, or priced.

`sources` maps a dotted key (`traffic.requests_per_day`) to where its value came from (a file and
key, a flag, an inputs file), so the report can name the origin of every number it shows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunekit.cost.prices import PricePoint, Provider


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Traffic(_Strict):
    requests_per_day: float | None = Field(None, gt=0, description="Requests a day at today's volume.")
    overhead_tokens: float = Field(
        0, ge=0, description="Prompt tokens the prompted model needs and the tuned one does not: instructions, few-shot examples."
    )
    input_tokens: float = Field(0, ge=0, description="Prompt tokens of the request's own content, sent to both models.")
    output_tokens: float = Field(0, ge=0, description="Generated tokens per request.")


class Prompted(_Strict):
    model: str | None = Field("gpt-4o", description="Hosted model prompted today (a key of the price table's api section).")
    input_per_m: float | None = Field(None, ge=0, description="$ per million prompt tokens (default: the price table's).")
    output_per_m: float | None = Field(None, ge=0, description="$ per million output tokens (default: the price table's).")
    cost_per_request: float | None = Field(None, ge=0, description="Give the prompted cost per request directly.")


class FineTuned(_Strict):
    hosting: Literal["self_hosted", "api"] = Field(
        "self_hosted", description="`self_hosted`: GPU $/h over sustained requests/h; `api`: a provider's fine-tuned model, per token."
    )
    cost_per_request: float | None = Field(None, ge=0, description="Give the fine-tuned cost per request directly.")
    overhead_tokens: float = Field(0, ge=0, description="Prompt tokens the tuned model still gets on top of the request (a short system prompt).")
    # api hosting
    model: str | None = Field(None, description="api: the fine-tuned model's price-table key, e.g. ft:gpt-4o-mini.")
    input_per_m: float | None = Field(None, ge=0, description="api: $ per million prompt tokens.")
    output_per_m: float | None = Field(None, ge=0, description="api: $ per million output tokens.")
    # self hosting
    gpu: str | None = Field(None, description="self_hosted: the serving GPU (price-table key or device name).")
    provider: Provider = Field("specialist", description="Where the serving GPU is rented.")
    price_point: PricePoint = Field("mid", description="Which end of the table's price range.")
    gpu_per_hour: float | None = Field(None, gt=0, description="self_hosted: $ per GPU-hour (default: the price table's).")
    gpus: int = Field(1, gt=0, description="GPUs per serving replica.")
    requests_per_s: float | None = Field(None, gt=0, description="self_hosted: sustained requests/s of one replica (a serving benchmark).")
    billing: Literal["sustained", "always_on"] = Field(
        "sustained",
        description="`sustained`: pay only for busy GPU time (hourly / requests per hour); `always_on`: enough replicas "
        "for the volume run all day, idle time included.",
    )


class Training(_Strict):
    cost: float | None = Field(None, ge=0, description="Give the training cost directly.")
    hours: float | None = Field(None, gt=0, description="Wall-clock hours of one training run (a run's manifest, or tunekit estimate).")
    gpu: str | None = Field(None, description="The training GPU (price-table key or device name; `cpu` for a CPU run).")
    provider: Provider = Field("specialist", description="Where the training GPU is rented.")
    price_point: PricePoint = Field("mid", description="Which end of the table's price range.")
    gpu_per_hour: float | None = Field(None, gt=0, description="$ per GPU-hour (default: the price table's).")
    gpus: int = Field(1, gt=0, description="GPUs the run used.")
    tokens: float | None = Field(None, gt=0, description="Tokens trained (all epochs): API fine-tuning is priced on these.")
    per_m_tokens: float | None = Field(None, ge=0, description="API fine-tuning: $ per million training tokens.")
    runs: int = Field(1, gt=0, description="Training runs paid for (tuning attempts, retrains).")


class DataCost(_Strict):
    cost: float | None = Field(None, ge=0, description="Give the data cost directly (labelling, collection, review).")
    examples: int | None = Field(None, gt=0, description="Labelled examples bought or written.")
    per_example: float | None = Field(None, ge=0, description="$ per labelled example.")


class CostInputs(_Strict):
    traffic: Traffic = Field(default_factory=Traffic)
    prompted: Prompted = Field(default_factory=Prompted)
    finetuned: FineTuned = Field(default_factory=FineTuned)
    training: Training = Field(default_factory=Training)
    data: DataCost = Field(default_factory=DataCost)
    months: int = Field(12, gt=0, description="Horizon of the totals.")
    sensitivity_volumes: list[float] | None = Field(None, description="Requests/day rows of the sensitivity table.")
    sensitivity_overheads: list[float] | None = Field(None, description="Overhead-token columns of the sensitivity table.")
    sources: dict[str, str] = Field(default_factory=dict, description="Dotted key -> where its value came from.")

    def source(self, key: str, default: str = "default") -> str:
        return self.sources.get(key, default)
