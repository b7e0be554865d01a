"""The price table: GPU $/hour by model and provider type, API $/M tokens. Shipped, dated, overridable."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunekit.errors import TunekitError
from tunekit.config.textfiles import read_yaml

Provider = Literal["hyperscaler", "specialist", "marketplace"]
PricePoint = Literal["low", "mid", "high"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuPrice(_Strict):
    memory_gib: float = Field(ge=0, description="GPU memory; 0 for the CPU-only entry.")
    match: list[str] = Field(default_factory=list, description="Substrings of torch device names this entry prices.")
    per_hour: dict[Provider, tuple[float | None, float | None]] = Field(description="[low, high] $ per GPU-hour.")
    source: str = ""

    def hourly(self, provider: Provider, point: PricePoint) -> float | None:
        low, high = self.per_hour.get(provider, (None, None))
        if low is None or high is None:
            return None
        return {"low": low, "high": high, "mid": (low + high) / 2}[point]


class ApiPrice(_Strict):
    provider: str = ""
    input_per_m: float = Field(ge=0, description="$ per million prompt tokens.")
    output_per_m: float = Field(ge=0, description="$ per million generated tokens.")
    training_per_m: float | None = Field(None, ge=0, description="Fine-tuned models: $ per million training tokens.")
    source: str = ""


class PriceTable(_Strict):
    as_of: dt.date = Field(description="When these prices were read off the providers' pages.")
    currency: str = "USD"
    stale_after_days: int = Field(180, gt=0)
    notes: str = ""
    gpus: dict[str, GpuPrice] = Field(default_factory=dict)
    api: dict[str, ApiPrice] = Field(default_factory=dict)
    origin: str = Field("tunekit/cost/prices.yaml", description="Files the table was read from (set by load_prices).")

    def gpu(self, name: str) -> tuple[str, GpuPrice]:
        """The entry for a table key or a torch device name ('NVIDIA H100 80GB HBM3' -> h100-80gb)."""
        key = name.strip().lower()
        if key in self.gpus:
            return key, self.gpus[key]
        # Longest alias first, so 'A100-SXM4-80GB' is not priced as the 40 GB card.
        aliases = sorted(((m, k) for k, g in self.gpus.items() for m in g.match), key=lambda pair: -len(pair[0]))
        for alias, table_key in aliases:
            if alias.lower() in key:
                return table_key, self.gpus[table_key]
        raise TunekitError(
            f"GPU '{name}' is not in the price table ({self.origin})",
            hint=f"use one of: {', '.join(self.gpus)}; or give its price with --gpu-per-hour",
        )

    def api_model(self, name: str, key: str) -> ApiPrice:
        """The entry of model `name`; `key` (e.g. prompted.model) names the input in the error."""
        if name not in self.api:
            raise TunekitError(
                f"{key}: model '{name}' is not in the price table ({self.origin})",
                hint=f"use one of: {', '.join(self.api)}; or add it to a price file (--prices FILE)",
            )
        return self.api[name]

    def stale_note(self, today: dt.date | None = None) -> str | None:
        age = ((today or dt.date.today()) - self.as_of).days
        if age <= self.stale_after_days:
            return None
        return (
            f"the price table is {age} days old (as of {self.as_of}); check current prices and override them "
            "with --prices FILE or the single price flags"
        )


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "price YAML file", hint="pass a price table YAML file to --prices (the shipped one: tunekit/cost/prices.yaml)")
    if not isinstance(data, dict):
        raise TunekitError(f"{path}: a price file is a YAML mapping (as_of, gpus, api)", hint="see tunekit/cost/prices.yaml")
    return data


def shipped_prices_text() -> str:
    return resources.files("tunekit.cost").joinpath("prices.yaml").read_text(encoding="utf-8")


def _merged(base: dict, override: dict) -> dict:
    """`base` with `override`'s values, key by key: overriding one price keeps the entry's other fields."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with the values of `override` (a file of the same shape) replacing its own."""
    data = yaml.safe_load(shipped_prices_text())
    origin = "tunekit/cost/prices.yaml"
    if override is not None:
        extra = _read_yaml(Path(override))
        if "as_of" not in extra:
            raise TunekitError(f"{override}: as_of: required key is missing", hint="date your prices, e.g. as_of: 2026-01-15")
        data = _merged(data, extra)
        origin = f"{origin} + {override}"
    data["origin"] = origin
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise TunekitError(
            f"{override or origin}: {key}: {err['msg']} ({len(exc.errors())} problem(s) in the price file)",
            hint="see tunekit/cost/prices.yaml for the shape of each entry",
        ) from None
