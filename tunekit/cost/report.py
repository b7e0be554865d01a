"""`cost_report(inputs, prices) -> CostReport`: the public entry point of the cost stage.

    break-even requests N = ceil((training + data) / (prompted per request - fine-tuned per request))

and N does not exist ("never") when the fine-tuned request is not cheaper.
"""

from __future__ import annotations

import math

from tunekit.cost.breakeven import (
    DAYS_PER_MONTH,
    CostReport,
    SensitivityCell,
    Figures,
    data_cost,
    finetuned_per_request,
    prompted_per_request,
    training_cost,
)
from tunekit.cost.inputs import CostInputs
from tunekit.cost.prices import PriceTable

VOLUME_FACTORS = (0.1, 0.5, 1, 2, 10)
OVERHEAD_FACTORS = (0.25, 0.5, 1, 2)
VOLUMES_WITHOUT_TRAFFIC = (100, 1_000, 10_000, 100_000)


def break_even(setup: float, prompted: float, finetuned: float) -> int | None:
    """Requests after which the fine-tuned model has paid back its setup; None when it never does."""
    margin = prompted - finetuned
    if margin <= 0:
        return None
    # Round the quotient first: 500 / (0.02 - 0.005) is 33,333.33..., but float noise must not turn
    # an exact quotient (50 / 0.01) into one request more.
    return max(0, math.ceil(round(setup / margin, 9)))


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${value:.6f}".rstrip("0")


def _verdict(report: CostReport) -> str:
    if report.never:
        return (
            f"never: a fine-tuned request costs {_money(report.finetuned_per_request)}, not less than a prompted one "
            f"({_money(report.prompted_per_request)}), so the {_money(report.setup_cost)} setup is never paid back"
        )
    days = f" ({report.break_even_days:,.1f} days at {report.requests_per_day:,.0f} requests/day)" if report.break_even_days is not None else ""
    return f"fine-tuning pays back its {_money(report.setup_cost)} setup after {report.break_even_requests:,} requests{days}"


def _axes(inputs: CostInputs, varies: bool) -> tuple[list[float], list[float]]:
    volume = inputs.traffic.requests_per_day
    volumes = inputs.sensitivity_volumes or (
        [volume * f for f in VOLUME_FACTORS] if volume else list(VOLUMES_WITHOUT_TRAFFIC)
    )
    overhead = inputs.traffic.overhead_tokens
    if not varies:
        return volumes, [overhead]
    overheads = inputs.sensitivity_overheads or ([overhead * f for f in OVERHEAD_FACTORS] if overhead else [0.0])
    return volumes, overheads


def sensitivity(inputs: CostInputs, prices: PriceTable, setup: float) -> tuple[list[SensitivityCell], bool]:
    """Break-even and savings over the horizon for each (requests/day, overhead tokens) pair.

    The overhead axis only moves the prompted cost when it is priced per token; a prompted cost per
    request given as one figure keeps a single column (the bool says which)."""
    varies = inputs.prompted.cost_per_request is None
    volumes, overheads = _axes(inputs, varies)
    days = inputs.months * DAYS_PER_MONTH
    cells = []
    for volume in volumes:
        finetuned = finetuned_per_request(inputs, prices, volume)
        for overhead in overheads:
            prompted = prompted_per_request(inputs, prices, overhead)
            requests = break_even(setup, prompted, finetuned)
            cells.append(SensitivityCell(
                requests_per_day=volume,
                overhead_tokens=overhead,
                prompted_per_request=prompted,
                finetuned_per_request=finetuned,
                break_even_requests=requests,
                break_even_days=None if requests is None else requests / volume,
                savings_over_horizon=(prompted - finetuned) * volume * days - setup,
            ))  # fmt: skip
    return cells, varies


def cost_report(inputs: CostInputs, prices: PriceTable) -> CostReport:
    """Prompted vs fine-tuned cost per request, setup cost, break-even, totals and sensitivity."""
    figures, notes = Figures(inputs), []
    volume = inputs.traffic.requests_per_day
    for key, label, unit in (
        ("traffic.requests_per_day", "requests per day", "requests/day"),
        ("traffic.overhead_tokens", "prompt overhead tokens the tuned model drops", "tokens/request"),
        ("traffic.input_tokens", "prompt tokens of the request itself", "tokens/request"),
        ("traffic.output_tokens", "output tokens", "tokens/request"),
    ):
        figures.given(key, label, getattr(inputs.traffic, key.split(".")[1]), unit)
    prompted = prompted_per_request(inputs, prices, inputs.traffic.overhead_tokens, figures)
    finetuned = finetuned_per_request(inputs, prices, volume, figures)
    train = training_cost(inputs, prices, figures)
    data = data_cost(inputs, figures, notes)
    setup = train + data
    figures.add("setup.total", "setup cost (training + data)", setup, "$", "training.total + data.cost")
    requests = break_even(setup, prompted, finetuned)
    days = inputs.months * DAYS_PER_MONTH
    horizon = volume * days if volume else None
    report = CostReport(
        prompted_per_request=prompted,
        finetuned_per_request=finetuned,
        saving_per_request=prompted - finetuned,
        finetuned_hosting="given" if inputs.finetuned.cost_per_request is not None else inputs.finetuned.hosting,
        training_cost=train,
        data_cost=data,
        setup_cost=setup,
        break_even_requests=requests,
        break_even_days=requests / volume if requests is not None and volume else None,
        never=requests is None,
        requests_per_day=volume,
        horizon_months=inputs.months,
        horizon_requests=horizon,
        prompted_total=prompted * horizon if horizon else None,
        finetuned_total=setup + finetuned * horizon if horizon else None,
        savings_total=(prompted - finetuned) * horizon - setup if horizon else None,
        verdict="",
        prices_as_of=str(prices.as_of),
        figures=figures.items,
        notes=notes,
    )
    report.sensitivity, report.sensitivity_overhead_varies = sensitivity(inputs, prices, setup)
    report.verdict = _verdict(report)
    _add_notes(report, inputs, prices)
    return report


def _add_notes(report: CostReport, inputs: CostInputs, prices: PriceTable) -> None:
    stale = prices.stale_note()
    if stale:
        report.notes.append(stale)
    if report.requests_per_day is None:
        report.notes.append("requests per day not given: no days to break even and no totals (give --requests-per-day or a request log)")
    side = inputs.finetuned
    if side.hosting == "self_hosted" and side.cost_per_request is None and side.billing == "sustained" and report.requests_per_day:
        busy = report.requests_per_day / 86400 / side.requests_per_s
        if busy < 0.5:
            always_on = finetuned_per_request(inputs.model_copy(update={"finetuned": side.model_copy(update={"billing": "always_on"})}), prices, report.requests_per_day)
            report.notes.append(
                f"one replica would be busy {100 * busy:.1f}% of the day: a GPU kept on all day costs "
                f"{_money(always_on)} per request, not {_money(report.finetuned_per_request)} (--billing always_on prices that)"
            )
    if report.horizon_requests and not report.never and report.break_even_requests > report.horizon_requests:
        report.notes.append(
            f"break-even comes after the {report.horizon_months}-month horizon ({report.horizon_requests:,.0f} requests)"
        )
