"""`tunekit cost` and `tunekit advise`: flags and a YAML file map onto tunekit.cost's functions.

Values are checked by the cost stage's models (not by typer), so a bad value is one TunekitError
with its key, and exit 1, like every other user mistake.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunekit.console import console

# readable=False: the cost stage's readers report an unreadable file themselves (see tunekit.cli.common).
Opt = partial(typer.Option, readable=False)
# flag name -> dotted key of CostInputs
COST_FLAGS = {
    "requests_per_day": "traffic.requests_per_day", "overhead_tokens": "traffic.overhead_tokens",
    "input_tokens": "traffic.input_tokens", "output_tokens": "traffic.output_tokens",
    "prompted_model": "prompted.model", "prompted_input_per_m": "prompted.input_per_m",
    "prompted_output_per_m": "prompted.output_per_m", "prompted_cost_per_request": "prompted.cost_per_request",
    "hosting": "finetuned.hosting", "finetuned_model": "finetuned.model", "finetuned_input_per_m": "finetuned.input_per_m",
    "finetuned_output_per_m": "finetuned.output_per_m", "finetuned_cost_per_request": "finetuned.cost_per_request",
    "finetuned_overhead_tokens": "finetuned.overhead_tokens", "serve_gpu": "finetuned.gpu", "serve_provider": "finetuned.provider",
    "serve_gpu_per_hour": "finetuned.gpu_per_hour", "serve_gpus": "finetuned.gpus", "requests_per_s": "finetuned.requests_per_s",
    "billing": "finetuned.billing", "training_cost": "training.cost", "training_hours": "training.hours",
    "train_gpu": "training.gpu", "train_provider": "training.provider", "train_gpu_per_hour": "training.gpu_per_hour",
    "train_gpus": "training.gpus", "training_tokens": "training.tokens", "training_per_m_tokens": "training.per_m_tokens",
    "training_runs": "training.runs", "data_cost": "data.cost", "data_examples": "data.examples",
    "data_per_example": "data.per_example", "months": "months",
}  # fmt: skip
ADVISE_FLAGS = (
    "task", "knowledge_changes", "labelled_examples", "preference_pairs", "daily_requests", "setup_budget", "latency_ms",
    "compliance", "domain_vocabulary", "domain_text_tokens", "gpu_memory_gib", "base_params_b", "base_model",
    "prompt_overhead_tokens", "request_tokens", "output_tokens", "prompted_model", "finetuned_model",
)  # fmt: skip


def _flag_layer(values: dict, mapping: dict[str, str]) -> dict:
    return {key: (values[name], f"--{name.replace('_', '-')}") for name, key in mapping.items() if values.get(name) is not None}


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value:.6g}"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _print_report(report) -> None:
    console.print("[bold]figures[/] [dim](and where each came from)[/]")
    for fig in report.figures:
        console.print(f"  {fig.label}: {_number(fig.value)} {fig.unit}  [dim]({fig.source})[/]", soft_wrap=True, highlight=False)
    console.print(
        f"per request: prompted {_money(report.prompted_per_request)}, fine-tuned ({report.finetuned_hosting}) "
        f"{_money(report.finetuned_per_request)}; setup {_money(report.setup_cost)} "
        f"(training {_money(report.training_cost)} + data {_money(report.data_cost)})"
    )
    console.print(f"[bold]{report.verdict}[/]", soft_wrap=True)
    if report.horizon_requests:
        console.print(
            f"{report.horizon_months} months ({report.horizon_requests:,.0f} requests): prompted {_money(report.prompted_total)}, "
            f"fine-tuned {_money(report.finetuned_total)}, saving {_money(report.savings_total)}"
        )
    _print_sensitivity(report)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]", soft_wrap=True)


def _print_sensitivity(report) -> None:
    from rich.table import Table

    overheads = sorted({c.overhead_tokens for c in report.sensitivity})
    title = f"break-even days / saving over {report.horizon_months} months, by requests/day"
    title += " and overhead tokens" if report.sensitivity_overhead_varies else " (prompted cost given per request)"
    table = Table(title=title, title_justify="left")
    table.add_column("requests/day", justify="right")
    for overhead in overheads:
        table.add_column(f"{overhead:,.0f} tokens" if report.sensitivity_overhead_varies else "", justify="right")
    for volume in sorted({c.requests_per_day for c in report.sensitivity}):
        cells = {c.overhead_tokens: c for c in report.sensitivity if c.requests_per_day == volume}
        row = []
        for overhead in overheads:
            cell = cells[overhead]
            days = "never" if cell.break_even_days is None else f"{cell.break_even_days:,.1f} d"
            row.append(f"{days} / {_money(cell.savings_over_horizon)}")
        table.add_row(f"{volume:,.0f}", *row)
    console.print(table)


def cost(
    inputs: Annotated[Optional[Path], typer.Argument(help="A YAML file of cost inputs (keys as in docs/cost.md); flags override it.", readable=False)] = None,
    run: Annotated[Optional[Path], Opt(help="A run directory: training hours, hardware, tokens trained, training rows.")] = None,
    estimate: Annotated[Optional[Path], Opt(help="`tunekit estimate --json` output, or a recipe to estimate now: training hours and tokens.")] = None,
    tokens_per_s: Annotated[Optional[float], Opt(help="Training speed on the target GPU, for --estimate RECIPE.")] = None,
    benchmark: Annotated[Optional[Path], Opt(help="Serving benchmark JSON/JSONL: sustained requests_per_s of one replica.")] = None,
    request_log: Annotated[Optional[Path], Opt(help="Per-request rows (JSONL, or SQLite table `requests`): volume and token counts.")] = None,
    log_model: Annotated[Optional[str], Opt(help="Only the request-log rows of this model.")] = None,
    prices: Annotated[Optional[Path], Opt(help="A price file (same shape as the shipped one); its entries replace the shipped ones.")] = None,
    requests_per_day: Annotated[Optional[float], Opt(help="Requests a day.")] = None,
    overhead_tokens: Annotated[Optional[float], Opt(help="Prompt tokens only the prompted model needs (instructions, examples).")] = None,
    input_tokens: Annotated[Optional[float], Opt(help="Prompt tokens of the request itself.")] = None,
    output_tokens: Annotated[Optional[float], Opt(help="Output tokens per request.")] = None,
    prompted_model: Annotated[Optional[str], Opt(help="Prompted model (price-table key, e.g. gpt-4o).")] = None,
    prompted_input_per_m: Annotated[Optional[float], Opt(help="Prompted $ per million input tokens.")] = None,
    prompted_output_per_m: Annotated[Optional[float], Opt(help="Prompted $ per million output tokens.")] = None,
    prompted_cost_per_request: Annotated[Optional[float], Opt(help="Prompted $ per request, given directly.")] = None,
    hosting: Annotated[Optional[str], Opt(help="Fine-tuned hosting: self_hosted or api.")] = None,
    finetuned_model: Annotated[Optional[str], Opt(help="api hosting: the fine-tuned model's price-table key (e.g. ft:gpt-4o-mini).")] = None,
    finetuned_input_per_m: Annotated[Optional[float], Opt(help="api hosting: $ per million input tokens.")] = None,
    finetuned_output_per_m: Annotated[Optional[float], Opt(help="api hosting: $ per million output tokens.")] = None,
    finetuned_cost_per_request: Annotated[Optional[float], Opt(help="Fine-tuned $ per request, given directly.")] = None,
    finetuned_overhead_tokens: Annotated[Optional[float], Opt(help="Prompt tokens the tuned model still gets (a short system prompt).")] = None,
    serve_gpu: Annotated[Optional[str], Opt(help="Serving GPU (price-table key, e.g. l4, h100-80gb).")] = None,
    serve_provider: Annotated[Optional[str], Opt(help="Serving GPU provider type: hyperscaler, specialist, marketplace.")] = None,
    serve_gpu_per_hour: Annotated[Optional[float], Opt(help="Serving $ per GPU-hour.")] = None,
    serve_gpus: Annotated[Optional[int], Opt(help="GPUs per serving replica.")] = None,
    requests_per_s: Annotated[Optional[float], Opt(help="Sustained requests/s of one serving replica.")] = None,
    billing: Annotated[Optional[str], Opt(help="Self-hosted billing: sustained (busy time only) or always_on.")] = None,
    training_cost: Annotated[Optional[float], Opt(help="$ of one training run, given directly.")] = None,
    training_hours: Annotated[Optional[float], Opt(help="Hours of one training run.")] = None,
    train_gpu: Annotated[Optional[str], Opt(help="Training GPU (price-table key or device name; cpu for a CPU run).")] = None,
    train_provider: Annotated[Optional[str], Opt(help="Training GPU provider type.")] = None,
    train_gpu_per_hour: Annotated[Optional[float], Opt(help="Training $ per GPU-hour.")] = None,
    train_gpus: Annotated[Optional[int], Opt(help="GPUs of the training run.")] = None,
    training_tokens: Annotated[Optional[float], Opt(help="Tokens trained, all epochs (API fine-tuning is priced on them).")] = None,
    training_per_m_tokens: Annotated[Optional[float], Opt(help="API fine-tuning $ per million training tokens.")] = None,
    training_runs: Annotated[Optional[int], Opt(help="Training runs paid for (attempts, retrains).")] = None,
    data_cost: Annotated[Optional[float], Opt(help="$ of data collection and labelling.")] = None,
    data_examples: Annotated[Optional[int], Opt(help="Labelled examples paid for.")] = None,
    data_per_example: Annotated[Optional[float], Opt(help="$ per labelled example.")] = None,
    months: Annotated[Optional[int], Opt(help="Horizon of the totals, months (default 12).")] = None,
    plot: Annotated[Optional[Path], Opt(help="Write the cumulative cost curves (PNG) here.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Break-even of fine-tuning against prompting: cost per request, training and data cost,
    requests and days to pay back, totals, sensitivity; from flags, a YAML file and tunekit's records."""
    from tunekit.cost import cost_report, load_inputs, load_prices, plot_cost_curves

    flags = _flag_layer(locals(), COST_FLAGS)
    table = load_prices(prices)
    cost_inputs = load_inputs(
        inputs_file=inputs, flags=flags, run=run, estimate=estimate, tokens_per_s=tokens_per_s,
        benchmark=benchmark, request_log=request_log, log_model=log_model,
    )  # fmt: skip
    report = cost_report(cost_inputs, table)
    if plot is not None:
        plot_cost_curves(report, plot)
    if as_json:
        typer.echo(report.to_json())
        return
    _print_report(report)
    if plot is not None:
        console.print(f"cost curves: {plot}")


def _print_advice(advice) -> None:
    console.print(f"[bold]{advice.summary}[/]", soft_wrap=True)
    for finding in advice.findings:
        numbers = ", ".join(f"{k}={_number(v)}" for k, v in finding.numbers.items() if v is not None)
        console.print(f"  - [cyan]{finding.rule}[/] → {finding.points_to}: {finding.text}", soft_wrap=True)
        if numbers:
            console.print(f"    [dim]{numbers}[/]", soft_wrap=True)
    for index, step in enumerate(advice.steps, 1):
        console.print(f"  {index}. {step}", soft_wrap=True)
    for recipe in advice.recipes:
        console.print(f"starter recipe: {recipe} (check it with `tunekit validate {recipe}`)")


def advise(
    situation: Annotated[Optional[Path], typer.Argument(help="A YAML file of the situation's keys; flags override it.", readable=False)] = None,
    task: Annotated[Optional[str], Opt(help="classification, extraction, structured_output, style, knowledge_qa, chat, summarization, code, other.")] = None,
    knowledge_changes: Annotated[Optional[str], Opt(help="How often the facts change: never, yearly, quarterly, monthly, weekly, daily.")] = None,
    labelled_examples: Annotated[Optional[int], Opt(help="Labelled input/answer pairs you have.")] = None,
    preference_pairs: Annotated[Optional[int], Opt(help="Chosen/rejected pairs you have.")] = None,
    daily_requests: Annotated[Optional[float], Opt(help="Expected requests a day.")] = None,
    setup_budget: Annotated[Optional[float], Opt(help="$ available for data and training.")] = None,
    latency_ms: Annotated[Optional[float], Opt(help="Longest acceptable response time (p95), ms.")] = None,
    compliance: Annotated[Optional[str], Opt(help="none, gdpr, hipaa, on_prem, air_gapped.")] = None,
    domain_vocabulary: Annotated[Optional[bool], Opt("--domain-vocabulary/--no-domain-vocabulary", help="The domain has its own terms.")] = None,
    domain_text_tokens: Annotated[Optional[int], Opt(help="Unlabelled in-domain text, tokens.")] = None,
    gpu_memory_gib: Annotated[Optional[float], Opt(help="GPU memory available for training, GiB.")] = None,
    base_params_b: Annotated[Optional[float], Opt(help="Size of the base you would tune, billions of parameters.")] = None,
    base_model: Annotated[Optional[str], Opt(help="Base model for the starter recipe.")] = None,
    prompt_overhead_tokens: Annotated[Optional[float], Opt(help="Instruction + example tokens a prompted model needs.")] = None,
    request_tokens: Annotated[Optional[float], Opt(help="Tokens of a request's own content.")] = None,
    output_tokens: Annotated[Optional[float], Opt(help="Tokens per answer.")] = None,
    prompted_model: Annotated[Optional[str], Opt(help="Hosted model you would prompt (price-table key).")] = None,
    finetuned_model: Annotated[Optional[str], Opt(help="Hosted fine-tune priced as the tuned side (price-table key).")] = None,
    prices: Annotated[Optional[Path], Opt(help="A price file overriding the shipped table's entries.")] = None,
    recipe_out: Annotated[Path, Opt(help="Where the starter recipe is written (fine-tune answers only).")] = Path("starter_recipe.yaml"),
    data: Annotated[Optional[Path], Opt(help="Your labelled data file, written into the starter recipe's data.train.")] = None,
    force: Annotated[bool, Opt(help="Overwrite an existing starter recipe.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print the advice as JSON on stdout.")] = False,
) -> None:
    """Prompt, few-shot, RAG or fine-tune (and which kind), by explicit rules; each answer with its
    reasons and numbers, and a starter recipe for the fine-tune answers."""
    from tunekit.cost import advise as run_advise, load_prices, load_situation
    from tunekit.errors import TunekitError

    values = locals()
    flags = {name: (values[name], f"--{name.replace('_', '-')}") for name in ADVISE_FLAGS if values.get(name) is not None}
    chosen = load_situation(situation, flags)
    if data is not None and not data.is_file():
        raise TunekitError(f"--data: file not found: {data}", hint="pass your labelled JSONL file, or leave --data out")
    advice = run_advise(chosen, load_prices(prices), recipe_out=recipe_out, data_path=data, overwrite=force)
    if as_json:
        typer.echo(json.dumps(advice.to_dict(), indent=2))
    else:
        _print_advice(advice)


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
    app.command("advise")(advise)
