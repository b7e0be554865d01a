"""`tunekit serve` (an OpenAI-compatible HTTP API) and `tunekit chat` (one message to it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError
from rich.markup import escape

from tunekit.cli.common import SetOpt

from tunekit.config import ServeConfig, load_recipe
from tunekit.console import console
from tunekit.errors import TunekitError

PLACEHOLDER_API_KEY = "tunekit"  # the server checks no key, but OpenAI clients insist on one
DEFAULT_URL = "http://127.0.0.1:8000/v1"


def serve_settings(
    path: Path, host: str | None, port: int | None, max_new_tokens: int | None, overrides: list[str] | None = None
) -> ServeConfig:
    """Command-line values win; then the run's recipe `serve` section (for a run dir or recipe); then defaults.

    Every value goes through ServeConfig's validation, so a port out of range is one clear error."""
    base: dict = {}
    recipe_file = path / "recipe.yaml" if path.is_dir() else path
    if recipe_file.is_file() and recipe_file.suffix in (".yaml", ".yml"):
        base = load_recipe(recipe_file, overrides or [], check_files=False).serve.model_dump()
    elif overrides:
        raise TunekitError(
            f"--set needs a recipe, and {path} is not a run directory or recipe file",
            hint="pass --host, --port or --max-new-tokens instead",
        )
    flags = {"host": host, "port": port, "max_new_tokens": max_new_tokens}
    try:
        return ServeConfig.model_validate({**base, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            given = f"--{name.replace('_', '-')} {flags[name]}" if flags.get(name) is not None else f"serve.{name}"
            problems.append(f"{given}: {error['msg']}")
        raise TunekitError("; ".join(problems), hint="see `tunekit serve --help` for the accepted values") from None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # listening everywhere; this machine reaches it on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise TunekitError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="pass another --port or --host") from None


def _print_usage(name: str, base_url: str) -> None:
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64})
    console.print(f"[bold green]Serving[/] [bold]{escape(name)}[/] at [bold]{base_url}[/]  (Ctrl+C to stop)")
    console.print("Try it:", style="dim")
    console.print(f"  tunekit chat 'Hello!' --url {base_url}", soft_wrap=True, markup=False)
    console.print(
        f"  curl {base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'", soft_wrap=True, markup=False
    )
    console.print(
        f'  python -c \'from openai import OpenAI; c = OpenAI(base_url="{base_url}", api_key="{PLACEHOLDER_API_KEY}"); '
        f'print(c.chat.completions.create(model="{name}", messages=[{{"role": "user", "content": "Hello!"}}])'
        ".choices[0].message.content)'",
        soft_wrap=True,
        markup=False,
    )


def serve_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="A run directory, a recipe file, a model directory (e.g. export/merged), or a base model name.",
            show_default=False,
        ),
    ],
    host: Annotated[
        Optional[str], typer.Option(help="Interface to listen on (default: the recipe's serve.host, else 127.0.0.1).")
    ] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port (default: the recipe's serve.port, else 8000).")] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(help="Default and upper bound of max_tokens in requests (default: recipe or 256).")
    ] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled (.bin/.pt) weights. Only for files you trust.")] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow model code from the hub to run. Only for sources you trust.")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models)."""
    import uvicorn

    from tunekit.serve import Engine, create_app

    settings = serve_settings(path, host, port, max_new_tokens, set_)
    _check_port_free(settings.host, settings.port)  # fail before spending time on loading weights
    with console.status(f"loading {path} ..."):
        engine = Engine.from_path(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    console.print(f"loaded {escape(engine.source)}", style="dim", soft_wrap=True)
    app = create_app(engine, max_new_tokens_limit=settings.max_new_tokens)
    _print_usage(engine.name, f"http://{_url_host(settings.host)}:{settings.port}/v1")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


# ---------------------------------------------------------------- client


def _api_url(url: str) -> str:
    """Accept `http://host:port` as well as `http://host:port/v1` (what OpenAI clients expect)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def send_chat(
    message: str,
    *,
    url: str = DEFAULT_URL,
    model: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    timeout_s: float = 600.0,
) -> str:
    """Send one message to an OpenAI-compatible server and return the answer text."""
    try:
        import openai
    except ImportError:
        raise TunekitError("`tunekit chat` needs the `openai` package", hint="pip install openai") from None
    base_url = _api_url(url)
    client = openai.OpenAI(base_url=base_url, api_key=PLACEHOLDER_API_KEY, max_retries=0, timeout=timeout_s)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    try:
        if model is None:
            served = client.models.list().data
            if not served:
                raise TunekitError(f"the server at {base_url} serves no model")
            model = served[0].id
        extra = {"max_tokens": max_tokens} if max_tokens is not None else {}
        response = client.chat.completions.create(model=model, messages=messages, temperature=temperature, **extra)
    except openai.APIConnectionError:
        raise TunekitError(
            f"cannot reach a server at {base_url}",
            hint="start one with `tunekit serve <run-dir>` (in another terminal), or pass --url",
        ) from None
    except openai.APIStatusError as exc:
        raise TunekitError(f"the server at {base_url} refused the request ({exc.status_code}): {_server_message(exc)}") from None
    return response.choices[0].message.content or ""


def _server_message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return (error.get("message") if isinstance(error, dict) else None) or str(exc)


def chat_command(
    message: Annotated[str, typer.Argument(help="The user message to send.", show_default=False)],
    url: Annotated[str, typer.Option(help="Base URL of the OpenAI-compatible server.")] = DEFAULT_URL,
    model: Annotated[Optional[str], typer.Option(help="Model name (default: the first one the server lists).")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt sent before the message.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Most tokens to generate (default: the server's).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature; 0 is greedy and repeatable.")] = 0.0,
) -> None:
    """Send one message to a running `tunekit serve` (or any OpenAI-compatible server) and print the answer."""
    typer.echo(send_chat(message, url=url, model=model, system=system, max_tokens=max_tokens, temperature=temperature))


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve a run or model over an OpenAI-compatible HTTP API.")(serve_command)
    app.command("chat", help="Send one message to a running server and print the answer.")(chat_command)
