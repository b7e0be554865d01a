"""`tunekit export`: the adapter, a merged safetensors model, and a parity check."""

from __future__ import annotations

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run


def export(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Copy the trained adapter, merge it into the base model as safetensors, and check parity."""
    from tunekit.export import run_export

    cfg, run = recipe_and_run(recipe, set_)
    run_export(cfg, run)


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        help="Export a trained run: copy the LoRA adapter, write a merged safetensors model (tokenizer and chat "
        "template included) and check that it generates exactly what base + adapter generates.",
    )(export)
