"""The `tunekit` command. Each command group lives in its own module; this file wires them."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from rich.markup import escape

from tunekit.console import VERBOSE_ENV, console, verbose
from tunekit.errors import TunekitError

app = typer.Typer(
    name="tunekit",
    help="Fine-tune, evaluate, export and serve language models you own. One recipe drives every stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show raw library output (warnings, logs, progress bars) for debugging."),
) -> None:
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def _quiet_libraries() -> None:
    """Keep library chatter (download bars, deprecation notes) out of the user's terminal.

    Done through the libraries' environment switches so that `tunekit --help` does not pay for
    importing them. `--verbose` (or TUNEKIT_VERBOSE=1) leaves everything as the libraries set it; the
    flag is looked for here because this runs before typer parses the command line.
    """
    if verbose() or sys.argv[1:2] in (["--verbose"], ["-v"]):
        os.environ[VERBOSE_ENV] = "1"
        return
    for name, value in {
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "DATASETS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _register() -> None:
    # (module, how it attaches): a typer sub-app becomes a group, otherwise its commands are top level.
    from tunekit.cli import data, eval as eval_cmd, export, run, serve, train
    from tunekit.cli import cost, estimate, registry

    COMMANDS = [run, train, eval_cmd, export, serve, estimate, cost]
    for module in COMMANDS:
        module.register(app)
    app.add_typer(data.app, name="data", help="Prepare and audit training data.")
    app.add_typer(registry.app, name="registry", help="Model versions, aliases, promotion through gates, rollback.")


def _end_process_group() -> None:
    """Destroy the process group that `accelerate launch` ranks joined, before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads outlive Python and a rank can abort
    ("terminate called without an active exception", SIGABRT), failing the launch after a good
    run. No barrier first: a rank that failed must not hang the others.
    """
    dist = sys.modules.get("torch.distributed")  # `tunekit --help` does not import torch for this
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    _quiet_libraries()
    _register()
    try:
        app()
    except TunekitError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 1))  # 130 for a Ctrl-C that saved a checkpoint
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    finally:
        _end_process_group()
