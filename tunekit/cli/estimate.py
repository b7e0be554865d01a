"""`tunekit estimate`: parameters, memory, tokens and time of a recipe, before any training."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt
from tunekit.console import console

_GIB = 1024**3
_ROWS = [
    ("weights", "weights"),
    ("gradients + optimizer", "trainable_state"),
    ("activations, no checkpointing", "activations_no_checkpointing"),
    ("activations, checkpointing", "activations_checkpointing"),
    ("LM head (chunked logits)", "lm_head"),
]


def _gib(value: int) -> str:
    return f"{value / _GIB:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"


def _memory_table(result):
    from rich.table import Table

    names = {"full": "full", "lora": {"dora": "DoRA", "rslora": "rsLoRA"}.get(result.adapter, "LoRA"), "qlora": "QLoRA"}
    table = Table(title=f"GPU memory, GiB (batch {result.batch_size} x {result.max_length} tokens)", title_justify="left")
    table.add_column("")
    for mode, name in names.items():
        table.add_column(f"{name} ◀ recipe" if mode == result.recipe_mode else name, justify="right")
    table.add_row("trainable parameters", *(f"{result.trainable_params[m]:,}" for m in names))
    for label, attr in _ROWS:
        values = [getattr(result.memory[m], attr) for m in names]
        if any(values):
            table.add_row(label, *map(_gib, values))
    ckpt = "on" if result.gradient_checkpointing else "off"
    table.add_row(f"[bold]total (checkpointing {ckpt})", *(f"[bold]{_gib(result.memory[m].total)}" for m in names))
    if not result.gradient_checkpointing:
        table.add_row("total with checkpointing", *(_gib(result.memory[m].total_with_checkpointing) for m in names))
    return table


def _print(result) -> None:
    pct = 100 * result.recipe_trainable_params / result.total_params
    console.print(
        f"[bold]{result.model}[/] ({result.architecture}): {result.total_params:,} parameters; "
        f"{result.method}/{result.adapter} trains {result.recipe_trainable_params:,} ({pct:.2f}%)"
    )
    console.print(_memory_table(result))
    if result.tokens_per_epoch is not None:
        console.print(
            f"data: {result.train_examples:,} training examples, {result.tokens_per_epoch:,} tokens per epoch "
            f"[dim]({result.tokens_source})[/]"
        )
        console.print(f"run: {result.epochs:g} epoch(s), {result.total_steps:,} optimizer steps, {result.total_tokens:,} tokens")
    if result.seconds is not None:
        speed = f"{result.tokens_per_s:,.0f} tokens/s [dim]({result.tokens_per_s_source})[/]"
        console.print(f"time: about {_duration(result.seconds)} at {speed}")
    console.print(
        f"[dim]note: TRL's chunked LM head never holds the batch's full (tokens x vocabulary) fp32 logits "
        f"({_gib(result.logits_unfused)} GiB with their gradient)[/]",
        soft_wrap=True,
    )
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def estimate(
    recipe: RecipeArg,
    set_: SetOpt = None,
    shape: Annotated[
        Optional[str],
        typer.Option(help="Estimate a known architecture instead of base_model, offline (e.g. llama-3.1-8b, qwen2.5-7b)."),
    ] = None,
    tokens_per_s: Annotated[
        Optional[float],
        typer.Option("--tokens-per-s", min=0.001, help="Training speed for the time estimate (default: measured in the run's metrics.jsonl)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON on stdout.")] = False,
) -> None:
    """Estimate a run before spending on it: exact trainable parameters, GPU memory for full / LoRA /
    QLoRA, tokens per epoch and training time. No weights are loaded."""
    from tunekit.config import load_recipe
    from tunekit.train.estimate import estimate as run_estimate

    cfg = load_recipe(recipe, set_ or [])
    result = run_estimate(cfg, shape=shape, tokens_per_s=tokens_per_s)
    if as_json:
        typer.echo(result.to_json())
    else:
        _print(result)


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
