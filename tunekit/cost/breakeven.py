"""The priced pieces of a cost report: cost per request prompted and fine-tuned, training cost and
data cost. Every figure carries its source: the flag, file and key it was read from, the
price-table entry, or the formula that computed it. The formulas are written out in docs/cost.md;
tunekit.cost.report puts the pieces together (break-even, totals, sensitivity).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from tunekit.cost.inputs import CostInputs
from tunekit.cost.prices import PriceTable
from tunekit.errors import TunekitError

DAYS_PER_MONTH = 365 / 12
_M = 1_000_000


@dataclass
class Figure:
    key: str
    label: str
    value: float | int | str | None
    unit: str
    source: str


@dataclass
class SensitivityCell:
    requests_per_day: float
    overhead_tokens: float
    prompted_per_request: float
    finetuned_per_request: float
    break_even_requests: int | None  # None: never
    break_even_days: float | None
    savings_over_horizon: float


@dataclass
class CostReport:
    prompted_per_request: float
    finetuned_per_request: float
    saving_per_request: float
    finetuned_hosting: str
    training_cost: float
    data_cost: float
    setup_cost: float
    break_even_requests: int | None  # None: never
    break_even_days: float | None
    never: bool
    requests_per_day: float | None
    horizon_months: int
    horizon_requests: float | None
    prompted_total: float | None
    finetuned_total: float | None
    savings_total: float | None
    verdict: str
    prices_as_of: str
    figures: list[Figure] = field(default_factory=list)
    sensitivity: list[SensitivityCell] = field(default_factory=list)
    sensitivity_overhead_varies: bool = True
    notes: list[str] = field(default_factory=list)
    plot: str | None = None  # the PNG, once written

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class Figures:
    """Collects the figures of one report in the order they are worked out."""

    def __init__(self, inputs: CostInputs):
        self.inputs = inputs
        self.items: list[Figure] = []

    def given(self, key: str, label: str, value, unit: str) -> None:
        self.items.append(Figure(key, label, value, unit, self.inputs.source(key, "default")))

    def add(self, key: str, label: str, value, unit: str, source: str) -> None:
        self.items.append(Figure(key, label, value, unit, source))


# ---------------------------------------------------------------- per request


def _per_token(inputs: CostInputs, prices: PriceTable, key: str, overhead: tuple[float, str], figures: Figures | None) -> float:
    """Cost of one request priced per token: `key` is prompted or finetuned, `overhead` its extra
    prompt tokens and their key. Prices not given come from the price table's entry of `key.model`."""
    side, traffic = getattr(inputs, key), inputs.traffic
    missing = side.input_per_m is None or side.output_per_m is None
    if missing and side.model is None:
        raise TunekitError(
            f"{key}.model: required to price {key} requests (a price-table key), or give {key}.input_per_m and {key}.output_per_m",
            hint=f"e.g. --{key}-model {'gpt-4o' if key == 'prompted' else 'ft:gpt-4o-mini'}, or --{key}-cost-per-request",
        )
    table = prices.api_model(side.model, f"{key}.model") if missing else None
    p_in = side.input_per_m if side.input_per_m is not None else table.input_per_m
    p_out = side.output_per_m if side.output_per_m is not None else table.output_per_m
    tokens, tokens_key = overhead
    cost = (tokens + traffic.input_tokens) * p_in / _M + traffic.output_tokens * p_out / _M
    if figures is not None:
        where = f"price table {prices.origin} (as of {prices.as_of}): api.{side.model}"
        # With both prices given, a default model name says nothing about them.
        name = side.model if table is not None or f"{key}.model" in inputs.sources else "model"
        what = "fine-tuned" if key == "finetuned" else key
        for price, value, given in (("input_per_m", p_in, side.input_per_m), ("output_per_m", p_out, side.output_per_m)):
            source = inputs.source(f"{key}.{price}", "given") if given is not None else f"{where}.{price}"
            figures.add(f"{key}.{price}", f"{what} {name}: $ per M {price.split('_')[0]} tokens", value, "$/M tokens", source)
        figures.add(
            f"{key}.cost_per_request", f"{what} cost per request", cost, "$",
            f"({tokens_key} + traffic.input_tokens) x {key}.input_per_m / 1e6 + traffic.output_tokens x {key}.output_per_m / 1e6",
        )  # fmt: skip
    return cost


def prompted_per_request(inputs: CostInputs, prices: PriceTable, overhead_tokens: float, figures: Figures | None = None) -> float:
    if inputs.prompted.cost_per_request is not None:
        if figures is not None:
            figures.given("prompted.cost_per_request", "prompted cost per request", inputs.prompted.cost_per_request, "$")
        return inputs.prompted.cost_per_request
    return _per_token(inputs, prices, "prompted", (overhead_tokens, "traffic.overhead_tokens"), figures)


def _gpu_hourly(prices: PriceTable, section, key_prefix: str, inputs: CostInputs, figures: Figures | None) -> float:
    if section.gpu_per_hour is not None:
        if figures is not None:
            figures.given(f"{key_prefix}.gpu_per_hour", f"{key_prefix} GPU $ per hour", section.gpu_per_hour, "$/GPU-hour")
        return section.gpu_per_hour
    if section.gpu is None:
        raise TunekitError(
            f"{key_prefix}.gpu: required to price GPU hours (or give {key_prefix}.gpu_per_hour)",
            hint=f"name the GPU, e.g. --{'serve' if key_prefix == 'finetuned' else 'train'}-gpu h100-80gb (table keys: {', '.join(prices.gpus)})",
        )
    table_key, entry = prices.gpu(section.gpu)
    hourly = entry.hourly(section.provider, section.price_point)
    if hourly is None:
        raise TunekitError(
            f"{key_prefix}.provider: the price table has no {section.provider} price for {table_key}",
            hint=f"choose another provider type, or give {key_prefix}.gpu_per_hour",
        )
    if figures is not None:
        low, high = entry.per_hour[section.provider]
        figures.add(
            f"{key_prefix}.gpu_per_hour", f"{key_prefix} GPU {table_key} ({section.provider}, {section.price_point} of ${low}-{high})",
            hourly, "$/GPU-hour", f"price table {prices.origin} (as of {prices.as_of}): gpus.{table_key}.per_hour.{section.provider}"
            + (f"; GPU from {inputs.source(f'{key_prefix}.gpu')}" if f"{key_prefix}.gpu" in inputs.sources else ""),
        )  # fmt: skip
    return hourly


def finetuned_per_request(inputs: CostInputs, prices: PriceTable, requests_per_day: float | None, figures: Figures | None = None) -> float:
    side = inputs.finetuned
    if side.cost_per_request is not None:
        if figures is not None:
            figures.given("finetuned.cost_per_request", "fine-tuned cost per request", side.cost_per_request, "$")
        return side.cost_per_request
    if side.hosting == "api":
        return _per_token(inputs, prices, "finetuned", (side.overhead_tokens, "finetuned.overhead_tokens"), figures)
    if side.requests_per_s is None:
        raise TunekitError(
            "finetuned.requests_per_s: required for self_hosted hosting (the sustained throughput of one replica)",
            hint="pass a serving benchmark (--benchmark FILE) or --requests-per-s; or --finetuned-cost-per-request",
        )
    hourly = _gpu_hourly(prices, side, "finetuned", inputs, figures) * side.gpus
    if figures is not None:
        figures.given("finetuned.requests_per_s", "sustained requests/s of one serving replica", side.requests_per_s, "requests/s")
    per_hour_capacity = side.requests_per_s * 3600
    if side.billing == "sustained" or requests_per_day is None:
        cost, formula = hourly / per_hour_capacity, "finetuned.gpu_per_hour x finetuned.gpus / (finetuned.requests_per_s x 3600)"
    else:
        replicas = max(1, math.ceil(requests_per_day / 86400 / side.requests_per_s))
        cost = replicas * hourly * 24 / requests_per_day
        formula = f"{replicas} replica(s) x finetuned.gpus x finetuned.gpu_per_hour x 24 / traffic.requests_per_day (always on)"
    if figures is not None:
        figures.add("finetuned.cost_per_request", "fine-tuned cost per request (self-hosted)", cost, "$", formula)
    return cost


# ---------------------------------------------------------------- setup


def training_cost(inputs: CostInputs, prices: PriceTable, figures: Figures) -> float:
    train = inputs.training
    runs = f" x training.runs ({train.runs})" if train.runs != 1 else ""
    if train.cost is not None:
        figures.given("training.cost", "training cost of one run", train.cost, "$")
        per_run, formula = train.cost, "training.cost"
    elif inputs.finetuned.hosting == "api" and train.tokens is not None:
        rate = train.per_m_tokens
        if rate is None and inputs.finetuned.model is not None:
            rate = prices.api_model(inputs.finetuned.model, "finetuned.model").training_per_m
            where = f"price table {prices.origin}: api.{inputs.finetuned.model}.training_per_m"
        else:
            where = inputs.source("training.per_m_tokens", "given")
        if rate is None:
            raise TunekitError("training.per_m_tokens: the API fine-tuning price is unknown", hint="give --training-per-m-tokens")
        figures.given("training.tokens", "tokens trained (all epochs)", train.tokens, "tokens")
        figures.add("training.per_m_tokens", "API fine-tuning $ per M training tokens", rate, "$/M tokens", where)
        per_run, formula = train.tokens * rate / _M, "training.tokens x training.per_m_tokens / 1e6"
    elif train.hours is not None:
        figures.given("training.hours", "training wall time of one run", train.hours, "hours")
        hourly = _gpu_hourly(prices, train, "training", inputs, figures)
        per_run, formula = train.hours * hourly * train.gpus, "training.hours x training.gpu_per_hour x training.gpus"
        if train.tokens is not None:
            figures.given("training.tokens", "tokens trained (all epochs)", train.tokens, "tokens")
    else:
        raise TunekitError(
            "training: the training cost is unknown",
            hint="give training.cost (--training-cost), or a run directory (--run) or an estimate (--estimate) with a GPU "
            "(--train-gpu), or training.hours",
        )
    total = per_run * train.runs
    figures.add("training.total", "training cost", total, "$", formula + runs)
    return total


def data_cost(inputs: CostInputs, figures: Figures, notes: list[str]) -> float:
    data = inputs.data
    if data.cost is not None:
        figures.given("data.cost", "data cost", data.cost, "$")
        return data.cost
    if data.per_example is not None:
        if data.examples is None:
            raise TunekitError("data.examples: required with data.per_example", hint="give --data-examples N (or a run directory: its training rows)")
        figures.given("data.examples", "labelled examples", data.examples, "examples")
        figures.given("data.per_example", "$ per labelled example", data.per_example, "$")
        cost = data.examples * data.per_example
        figures.add("data.cost", "data cost", cost, "$", "data.examples x data.per_example")
        return cost
    figures.add("data.cost", "data cost", 0.0, "$", "not given")
    counted = f" ({data.examples:,} examples, {inputs.source('data.examples')})" if data.examples is not None else ""
    notes.append(
        f"data cost not given and counted as $0{counted}: labelling or collecting examples often costs more than "
        "training (give --data-cost or --data-per-example)"
    )
    return 0.0
