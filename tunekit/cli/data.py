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
        bool,
        typer.Option(
            "--strict", help="Fail when any row is removed for any reason, duplicates and policy drops included (sets data.strict)."
        ),
    ] = False,
) -> None:
    from tunekit.data import prepare as prepare_data_stage

    loaded, run = recipe_and_run(recipe, [*(set_ or []), *(["data.strict=true"] if strict else [])])
    prepare_data_stage(loaded, run)


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
