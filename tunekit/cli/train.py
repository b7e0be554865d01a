"""`tunekit train`."""

from __future__ import annotations

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.console import console


def train(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Train on the prepared data of a run (run `tunekit data prepare` first)."""
    from tunekit.train import run_sft

    cfg, run = recipe_and_run(recipe, set_)
    result = run_sft(cfg, run)
    val = f", validation loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    console.print(
        f"[green]trained[/] {result.steps} steps in {result.runtime_s:.0f}s: train loss {result.train_loss:.4f}{val}\n"
        f"adapter → {result.adapter_dir}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
