"""`tunekit run` (every stage) and `tunekit validate` (check a recipe without running it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.config import load_recipe
from tunekit.console import console
from tunekit.pipeline import STAGES, Stage


def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory of the same name.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run: keep its prepared data, train on from the newest checkpoint.")
    ] = False,
    stages: Annotated[
        Optional[list[Stage]],
        typer.Option(
            "--stages", "--stage", help="Run only this stage (repeatable: --stages prepare --stages train); default: all, in order."
        ),
    ] = None,
) -> None:
    """Run the whole pipeline: prepare → train → eval → export."""
    from tunekit.pipeline import run_pipeline

    cfg, run_paths = recipe_and_run(recipe, set_)
    results = run_pipeline(cfg, run_paths, stages=stages or STAGES, overwrite=overwrite, resume=resume)
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in results.timings_s.items())
    console.rule("[bold green]done")
    console.print(f"run directory: {run_paths.root}\ntimings: {timings}")


def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file to check.", show_default=False, readable=False)],
    set_: SetOpt = None,
) -> None:
    """Check a recipe (keys, values, files, base model) without loading any weights."""
    from tunekit.models.loading import check_model_reference

    cfg = load_recipe(recipe, set_ or [])
    check_model_reference(cfg.base_model, allow_pickle=cfg.allow_pickle)
    console.print(
        f"[green]ok[/] {recipe}: base model {cfg.base_model}, {cfg.train.method}/{cfg.train.adapter}, "
        f"run directory {cfg.run_dir}"
    )
    from tunekit.train.advice import count_train_examples, risky_settings

    for warning in risky_settings(cfg, count_train_examples(cfg)):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("validate")(validate)
