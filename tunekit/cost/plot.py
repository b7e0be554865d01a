"""Cumulative cost of prompting vs fine-tuning against requests served, with the crossover marked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunekit.cost.breakeven import CostReport

ZOOM = 4  # the crossover panel runs to this many times the break-even count


@dataclass
class PlotMarks:
    """What the figure shows, so a test (or a caller) can check it without reading pixels."""

    path: Path
    panels: list[float]  # right end (requests) of each panel
    crossover: tuple[float, float] | None  # (requests, dollars) where the two lines meet; None: never
    label: str


def _dollars(value: float) -> str:
    # matplotlib reads a pair of $ as mathtext; escape them.
    return f"\\${value:,.0f}" if value >= 10 else f"\\${value:.6g}"


def _lines(ax, report: CostReport, x_max: float) -> None:
    xs = [0, x_max]
    ax.plot(xs, [0, report.prompted_per_request * x_max], label=f"prompted ({_dollars(report.prompted_per_request)}/request)")
    ax.plot(
        xs,
        [report.setup_cost, report.setup_cost + report.finetuned_per_request * x_max],
        label=f"fine-tuned, {report.finetuned_hosting} ({_dollars(report.setup_cost)} setup + "
        f"{_dollars(report.finetuned_per_request)}/request)",
    )
    ax.set_xlim(0, x_max)
    ax.set_xlabel("requests served")
    ax.grid(alpha=0.3)


def plot_cost_curves(report: CostReport, out: Path) -> PlotMarks:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    n = report.break_even_requests
    horizon = report.horizon_requests or 0
    if n is None:
        panels = [horizon or 100_000]
    elif horizon > ZOOM * max(n, 1):
        panels = [ZOOM * max(n, 1), horizon]  # the crossover up close, then the whole horizon
    else:
        panels = [max(ZOOM * n, horizon, 1000)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    crossover, label = None, "never: fine-tuned requests are not cheaper"
    if n is not None:
        x = report.setup_cost / report.saving_per_request if report.saving_per_request else 0.0
        crossover = (x, report.prompted_per_request * x)
        days = f", {report.break_even_days:,.1f} days" if report.break_even_days is not None else ""
        label = f"break-even: {n:,} requests{days}"
    for index, (ax, x_max) in enumerate(zip(axes[0], panels)):
        _lines(ax, report, x_max)
        if crossover is not None and crossover[0] <= x_max:
            ax.plot(*crossover, "o", color="black", zorder=5)
            ax.axvline(crossover[0], color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, crossover, xytext=(0.35, 0.12), textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
        if horizon and horizon <= x_max:
            ax.axvline(horizon, color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"{report.horizon_months} months at {report.requests_per_day:,.0f} requests/day", fontsize=10)
        elif index == 0 and len(panels) > 1:
            ax.set_title("around the break-even", fontsize=10)
        if index == 0:
            ax.set_ylabel("cumulative cost, $")
            ax.legend(loc="upper left", fontsize=8)
    if n is None:
        axes[0][0].text(0.03, 0.72, label, transform=axes[0][0].transAxes, color="firebrick")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    report.plot = str(out)
    return PlotMarks(path=out, panels=panels, crossover=crossover, label=label)
