"""`tunekit eval`: score the tuned model against the base on the test split, then apply the gates."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run
from tunekit.console import console

MaxExamplesOpt = Annotated[
    Optional[int],
    typer.Option("--max-examples", "-n", help="Evaluate only the first N test examples (same as --set eval.max_examples=N)."),
]
TargetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--target",
        help="What 'tuned' is: adapter, model (full fine-tune), merged (export/merged) or endpoint (same as --set eval.target=...).",
    ),
]
EndpointOpt = Annotated[
    Optional[str],
    typer.Option("--endpoint", help="Score an OpenAI-compatible server instead: its base URL, e.g. http://127.0.0.1:8000/v1."),
]
EndpointModelOpt = Annotated[
    Optional[str], typer.Option("--endpoint-model", help="Model name to request from --endpoint (default: the run name).")
]


def eval_command(
    recipe_path: RecipeArg,
    set_: SetOpt = None,
    max_examples: MaxExamplesOpt = None,
    target: TargetOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_model: EndpointModelOpt = None,
) -> None:
    """Generate answers for the test split with the tuned model (and the base), compare metrics, apply the gates.

    Exits 1 when a gate in `eval.gates` fails; the verdict is written to <run>/eval/verdict.json.
    """
    from tunekit.eval import evaluate

    # Everything goes through the recipe, so it is validated like any other key.
    overrides = list(set_ or [])
    if max_examples is not None:
        overrides.append(f"eval.max_examples={max_examples}")
    if target is not None:
        overrides.append(f"eval.target={target}")
    if endpoint is not None:
        overrides += ["eval.target=endpoint", f"eval.endpoint.base_url={endpoint}"]
        if endpoint_model is not None:
            overrides.append(f"eval.endpoint.model={endpoint_model}")
    recipe, run = recipe_and_run(recipe_path, overrides)
    result = evaluate(recipe, run)
    console.print(f"[green]eval done[/]: {result.n_examples} examples, predictions in {result.predictions_path}")


def register(app: typer.Typer) -> None:
    app.command("eval", help="Score the tuned model (and the base, side by side) on the held-out test split; apply the gates.")(
        eval_command
    )
