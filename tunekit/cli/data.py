"""`tunekit data ...`: prepare the recipe's data into the run directory."""

from __future__ import annotations

from typing import Annotated

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run

app = typer.Typer(
    help="Prepare and audit training data: validate with line numbers, dedup, split, report.",
    no_args_is_help=True,
)


@app.command("prepare", help="Validate, clean and split the recipe's data into <run>/data, with a report of every line.")
def prepare(
    recipe: RecipeArg,
    set_: SetOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail when any row is removed for any reason, duplicates and policy drops included.")
    ] = False,
) -> None:
    from tunekit.errors import DataError
    from tunekit.pipeline import prepare_stage

    loaded, run = recipe_and_run(recipe, set_)
    report = prepare_stage(loaded, run)
    removed = report["quarantine"]["by_reason"]
    if strict and removed:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(removed.items()))
        raise DataError(
            f"--strict: {sum(removed.values())} row(s) were removed ({counts}); every one is listed in {run.quarantine}",
            hint="fix or remove those rows in the input, or run without --strict",
        )
