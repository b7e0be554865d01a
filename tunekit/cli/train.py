"""`tunekit train`."""

from __future__ import annotations

from typing import Annotated

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.console import console


ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run (killed, crashed or Ctrl-C) from its newest complete checkpoint, "
        "with the same data order, random state, optimizer and schedule.",
    ),
]


def train(recipe: RecipeArg, set_: SetOpt = None, resume: ResumeOpt = False) -> None:
    """Train on the prepared data of a run (run `tunekit data prepare` first).

    Runs unchanged under `accelerate launch` (several GPUs, or `--cpu --num_processes N`).
    """
    from tunekit.train import train as train_stage
    from tunekit.train.robust import is_main_process

    cfg, run = recipe_and_run(recipe, set_)
    result = train_stage(cfg, run, resume=resume)
    if not is_main_process():
        return
    val = f", validation loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    margin = result.metrics.get("eval_rewards/margins", result.metrics.get("rewards/margins"))
    reward = f", reward margin {margin:.4f}" if margin is not None else ""
    console.print(
        f"[green]trained[/] {result.method} {result.steps} steps in {result.runtime_s:.0f}s: "
        f"train loss {result.train_loss:.4f}{val}{reward}\n"
        f"{'model' if result.adapter == 'full' else 'adapter'} → {result.output_dir}"
    )


def register(app: typer.Typer) -> None:
    from tunekit.train.advice import guide_text

    # Starting points for the hyperparameters, shared with docs/recipe.md (tunekit.train.advice.GUIDE).
    app.command("train", epilog="Hyperparameter starting points:\n\n" + guide_text())(train)
