"""`tunekit data ...`: prepare the recipe's data into the run directory."""

from __future__ import annotations

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run

app = typer.Typer(
    help="Prepare and audit training data: validate with line numbers, dedup, split, report.",
    no_args_is_help=True,
)


@app.command("prepare", help="Validate, clean and split the recipe's data into <run>/data, with a report of every line.")
def prepare(recipe: RecipeArg, set_: SetOpt = None) -> None:
    from tunekit.pipeline import prepare_stage

    loaded, run = recipe_and_run(recipe, set_)
    prepare_stage(loaded, run)
