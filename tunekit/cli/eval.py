"""`tunekit eval`: score the tuned model against the base on the test split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.console import console

MaxExamplesOpt = Annotated[
    Optional[int],
    typer.Option("--max-examples", "-n", help="Evaluate only the first N test examples (same as --set eval.max_examples=N)."),
]


def eval_command(recipe_path: RecipeArg, set_: SetOpt = None, max_examples: MaxExamplesOpt = None) -> None:
    """Generate answers for the test split with the tuned model (and the base) and compare their metrics."""
    from tunekit.eval import run_eval

    overrides = list(set_ or [])
    if max_examples is not None:
        # Goes through the recipe, so it is validated (must be > 0) like any other key.
        overrides.append(f"eval.max_examples={max_examples}")
    recipe, run = recipe_and_run(recipe_path, overrides)
    report = run_eval(recipe, run)
    console.print(f"[green]eval done[/]: {report['n_examples']} examples, predictions in {run.eval_dir / 'predictions.jsonl'}")


def register(app: typer.Typer) -> None:
    app.command("eval", help="Score the tuned model (and the base, side by side) on the held-out test split.")(eval_command)
