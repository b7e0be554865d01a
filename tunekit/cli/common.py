"""Small pieces every CLI module shares: the recipe argument and run-directory lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunekit.config import Recipe, load_recipe
from tunekit.runs import RunPaths

# File arguments take readable=False: tunekit's own readers (tunekit.config.textfiles) say what is
# wrong with a file (missing, a directory, unreadable, not UTF-8) in one message and exit 1; typer's
# default would stop an unreadable one first, as a usage error.
RecipeArg = Annotated[
    Path,
    typer.Argument(
        help="A recipe YAML file, or a run directory (its resolved recipe.yaml is used).", show_default=False, readable=False
    ),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe key, e.g. --set train.epochs=1 (repeatable)."),
]


def recipe_and_run(path: Path, overrides: list[str] | None) -> tuple[Recipe, RunPaths]:
    recipe = load_recipe(path, overrides or [])
    return recipe, RunPaths(recipe.run_dir)
