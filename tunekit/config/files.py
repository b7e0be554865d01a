"""A recipe for data files given without one (`tunekit data prepare my.jsonl`): the defaults, the
files in the data keys, and the YAML lines a user would write to get the same thing."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunekit.config.recipe import Recipe, apply_overrides, parse_recipe
from tunekit.config.textfiles import file_problem
from tunekit.errors import RecipeError

RECIPE_SUFFIXES = (".yaml", ".yml")


def is_recipe_path(path: Path) -> bool:
    """A recipe file or a run directory (which holds its resolved recipe.yaml), rather than a data file.

    A directory without recipe.yaml is a data input (a saved Hugging Face dataset)."""
    path = Path(path)
    return path.suffix.lower() in RECIPE_SUFFIXES or (path.is_dir() and (path / "recipe.yaml").is_file())


def _raw(files: dict[str, Path], model: str | None, output_dir: Path | None) -> dict:
    data: dict = {"name": Path(files["train"]).stem}
    if model:
        data["base_model"] = model
    if output_dir is not None:
        data["output_dir"] = str(output_dir)
    data["data"] = {role: str(path) for role, path in files.items()}
    return data


def recipe_for_files(files: dict[str, Path], *, model: str | None = None, output_dir: Path | None = None,
                     overrides: list[str] | None = None) -> Recipe:
    """The recipe of `files` ({"train": ..., "eval": ..., "test": ...}), with the defaults and overrides,
    relative paths taken from the current directory."""
    problems = [f"data.{role}: {problem}" for role, path in files.items() if (problem := file_problem(Path(path), directory_ok=True))]
    if problems:
        raise RecipeError("the command line", problems)
    data = apply_overrides(_raw(files, model, output_dir), overrides or [])
    return parse_recipe(data, "the command line", base_dir=Path.cwd())


def recipe_lines_for_files(files: dict[str, Path], *, model: str | None = None, output_dir: Path | None = None,
                           overrides: list[str] | None = None) -> str:
    """The recipe YAML that `tunekit data prepare <recipe>` would turn into the same audit."""
    data = apply_overrides(_raw(files, model, output_dir), overrides or [])
    return yaml.safe_dump(data, sort_keys=False).rstrip()
