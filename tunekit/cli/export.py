"""`tunekit export`: the adapter, a merged safetensors model, GGUF files and an Ollama Modelfile."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tunekit.cli.common import RecipeArg, SetOpt, recipe_and_run

FormatOpt = Annotated[
    Optional[str],
    typer.Option(
        "--format",
        "-f",
        help="Comma-separated formats to build: merged, gguf, ollama (ollama implies gguf). Default: the recipe's export.formats.",
    ),
]
QuantOpt = Annotated[
    Optional[str],
    typer.Option(
        "--quant",
        "-q",
        help="Comma-separated GGUF types, e.g. q8_0,Q4_K_M (F16 is always written). Default: the recipe's export.gguf.types.",
    ),
]


def _as_overrides(format_: str | None, quant: str | None) -> list[str]:
    """--format/--quant are shorthands for recipe overrides, validated like any recipe key."""
    overrides = []
    formats = [f.strip() for f in format_.split(",") if f.strip()] if format_ is not None else None
    if quant:
        types = [q.strip() for q in quant.split(",") if q.strip()]
        overrides.append(f"export.gguf.types=[{', '.join(types)}]")
    if formats is not None:
        overrides.append(f"export.formats=[{', '.join(formats)}]")
    return overrides


def export(recipe: RecipeArg, format_: FormatOpt = None, quant: QuantOpt = None, set_: SetOpt = None) -> None:
    """Export a trained run: merged model, GGUF files with parity and quantization gate, Ollama Modelfile."""
    from tunekit.export import export as export_stage

    overrides = [*(set_ or []), *_as_overrides(format_, quant)]
    cfg, run = recipe_and_run(recipe, overrides)
    if quant and not cfg.export.writes_gguf:
        # Asking for quantized files means asking for GGUF: the recipe again with gguf added, validated as written.
        cfg, run = recipe_and_run(recipe, [*overrides, f"export.formats=[{', '.join([*cfg.export.formats, 'gguf'])}]"])
    export_stage(cfg, run)


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        help="Export a trained run: copy the LoRA adapter, write a merged safetensors model (tokenizer and chat "
        "template included) and check that it generates exactly what base + adapter generates; with --format gguf "
        "also GGUF files (F16 + --quant types) checked against the merged model and gated on perplexity; with "
        "--format ollama a Modelfile and the `ollama create` command.",
    )(export)
