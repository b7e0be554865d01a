"""`tunekit data ...`: prepare the recipe's data into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.console import console
from tunekit.runs import RunPaths

app = typer.Typer(
    help="Prepare and audit training data: validate with line numbers, dedup, split, report.",
    no_args_is_help=True,
)


DATA_ROLES = ("train", "eval", "test")


@app.command(
    "prepare",
    help="Validate, clean and split data into <run>/data, with a report of every line. Give a recipe (or a run "
    "directory), or just data files: FILE [EVAL_FILE [TEST_FILE]] are audited with the recipe defaults and the "
    "embedded model's tokenizer (or --model), and the recipe lines that reproduce the audit are printed.",
)
def prepare(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="A recipe YAML file or a run directory; or 1-3 data files (train, then eval, then test).", show_default=False, readable=False
        ),
    ],
    set_: SetOpt = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Fail when any row is removed for any reason, duplicates and policy drops included (sets data.strict)."
        ),
    ] = False,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Without a recipe: the model whose tokenizer measures lengths (default: the embedded one).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Without a recipe: where the run directory goes (default: ./runs).")
    ] = None,
) -> None:
    from tunekit.config import is_recipe_path, recipe_for_files, recipe_lines_for_files
    from tunekit.data import prepare as prepare_data_stage
    from tunekit.errors import TunekitError

    overrides = [*(set_ or []), *(["data.strict=true"] if strict else [])]
    if len(inputs) == 1 and is_recipe_path(inputs[0]):
        if model or out:
            raise TunekitError("--model and --out are for data files without a recipe", hint="set base_model / output_dir in the recipe (or with --set)")
        loaded, run = recipe_and_run(inputs[0], overrides)
        prepare_data_stage(loaded, run)
        return
    if len(inputs) > len(DATA_ROLES):
        raise TunekitError(
            f"{len(inputs)} files given; data prepare takes a recipe, or up to three data files (train, eval, test)",
            hint="write a recipe for more inputs (see `tunekit validate --help`)",
        )
    files = dict(zip(DATA_ROLES, inputs))
    loaded = recipe_for_files(files, model=model, output_dir=out, overrides=overrides)
    console.print("[dim]no recipe: the defaults, as these recipe lines would give them:[/]")
    console.print(recipe_lines_for_files(files, model=model, output_dir=out, overrides=overrides), markup=False, highlight=False)
    prepare_data_stage(loaded, RunPaths(loaded.run_dir))


@app.command(
    "preview",
    help="Show one example as training sees it: the model's chat template with the trained (loss) tokens highlighted.",
)
def preview(
    recipe: RecipeArg,
    index: Annotated[int, typer.Option("--index", "-i", help="Which example, from 0 (negative counts from the end).")] = 0,
    split: Annotated[
        str, typer.Option("--split", help="train, val or test: the run's prepared split, or the raw data file when there is none.")
    ] = "train",
    set_: SetOpt = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Mark trained text with ⟦ ⟧ instead of colours (always so when not on a terminal).")
    ] = False,
) -> None:
    from rich.console import Console

    from tunekit.errors import DataError
    from tunekit.models import load_tokenizer, resolve_model
    from tunekit.train.preview import load_example, plain_text, preview_chat, rich_text

    if split not in ("train", "val", "test"):
        raise DataError(f"--split {split!r} is not a split", hint="use --split train, val or test")
    loaded, run = recipe_and_run(recipe, set_)
    example = load_example(loaded, run, split, index)
    model_path = resolve_model(loaded.base_model, allow_pickle=loaded.allow_pickle)
    tokenizer = load_tokenizer(model_path, trust_remote_code=loaded.trust_remote_code)
    shown = preview_chat(tokenizer, example, loaded.data.max_length, loaded.data.over_length)
    out = Console(highlight=False, soft_wrap=True)
    if plain or not out.is_terminal:
        typer.echo(plain_text(shown))
    else:
        out.print(rich_text(shown))
