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


def _yaml_mapping(path: Path) -> dict | None:
    from tunekit.errors import TunekitError
    from tunekit.config.textfiles import read_yaml

    try:
        data = read_yaml(path, "YAML file")
    except TunekitError:
        return None  # load_recipe reports the file's problem with its line
    return data if isinstance(data, dict) else None


def is_serving_file(path: Path) -> bool:
    """A serving YAML holds only `serve` keys (host, port, models...); a recipe has a base_model and data."""
    if not (path.is_file() and path.suffix in (".yaml", ".yml")):
        return False
    data = _yaml_mapping(path)
    return data is not None and bool(data) and set(data) <= set(ServeConfig.model_fields)


def _serving_file(path: Path, overrides: list[str]) -> dict:
    from tunekit.config.recipe import apply_overrides

    data = {"serve": _yaml_mapping(path) or {}}
    return apply_overrides(data, overrides)["serve"] if overrides else data["serve"]


def serve_settings(
    path: Path, host: str | None, port: int | None, max_new_tokens: int | None, overrides: list[str] | None = None,
    backend: str | None = None,
) -> ServeConfig:
    """Command-line values win; then a serving YAML, or the run's recipe `serve` section (for a run dir
    or recipe); then defaults.

    Every value goes through ServeConfig's validation, so a port out of range is one clear error; a
    relative path in a serving or recipe file means next to that file."""
    from tunekit.config.common import anchor_paths

    base: dict = {}
    anchor = Path.cwd()
    recipe_file = path / "recipe.yaml" if path.is_dir() else path
    if is_serving_file(path):
        base, anchor = _serving_file(path, overrides or []), path.resolve().parent
    elif recipe_file.is_file() and recipe_file.suffix in (".yaml", ".yml"):
        base = load_recipe(recipe_file, overrides or [], check_files=False).serve.model_dump(exclude_unset=True)
        anchor = recipe_file.resolve().parent
    elif overrides:
        raise TunekitError(
            f"--set needs a recipe or serving file, and {path} is neither",
            hint="pass --host, --port or --max-new-tokens instead",
        )
    flags = {"host": host, "port": port, "max_new_tokens": max_new_tokens, "backend": backend}
    try:
        settings = ServeConfig.model_validate({**base, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            key = ".".join(str(p) for p in error["loc"])
            given = f"--{name.replace('_', '-')} {flags[name]}" if flags.get(name) is not None else f"serve.{key}" if key else "serve"
            problems.append(f"{given}: {error['msg'].removeprefix('Value error, ')}")
        where = f" in {path}" if base else ""
        raise TunekitError("; ".join(problems) + where, hint="see `tunekit serve --help` and docs/serve.md") from None
    anchor_paths(settings, anchor)
    return settings


def gateway_of(settings: ServeConfig):
    """The gateway (keys, limits) and request log the serve settings ask for; refuses an open server
    (no keys) on a non-loopback interface."""
    from tunekit.serve.gateway import Gateway, GatewaySettings
    from tunekit.serve.requestlog import RequestLog

    fields = settings.model_dump(include=set(GatewaySettings.model_fields))
    gateway = Gateway.from_settings(GatewaySettings(**fields))
    gateway.check_exposure(settings.host)
    log = RequestLog(settings.request_log, log_content=settings.log_content) if settings.request_log else None
    return gateway, log


def served_specs(paths: list[str], settings: ServeConfig, first_is_settings: bool) -> list:
    """What to load: the command line's paths (NAME=PATH names one), then the settings' models and base."""
    from tunekit.serve.sources import resolve_source

    specs: list = list(paths[1:] if first_is_settings else paths)
    if settings.base_model:
        specs.insert(0, settings.base_model)
    for entry in settings.models:
        source = resolve_source(f"{entry.name}={entry.path}")
        if entry.system_prompt is not None:
            source.system_prompt = entry.system_prompt
        specs.append(source)
    if not specs:
        raise TunekitError(f"{paths[0]} lists no models to serve", hint="add `models:` entries (name, path) or `base_model:`")
    return specs


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
    paths: Annotated[
        list[str],
        typer.Argument(
            help="What to serve: run directories, adapter directories (NAME=PATH to name one), a model directory "
            "(e.g. export/merged), a base model name, a recipe, or a serving YAML (host, port, models...). "
            "Adapters must share one base; it is served too.",
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
    backend: Annotated[
        Optional[str], typer.Option(help="Engine: hf (transformers + PEFT), llamacpp (GGUF on llama.cpp) or vllm (default: serve.backend, else hf).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models)."""
    import uvicorn

    from tunekit.serve import create_app
    from tunekit.serve.backends import open_engine

    first = Path(paths[0])
    settings = serve_settings(first, host, port, max_new_tokens, set_, backend)
    _check_port_free(settings.host, settings.port)  # fail before spending time on loading weights
    gateway, request_log = gateway_of(settings)
    specs = served_specs(paths, settings, is_serving_file(first))
    with console.status(f"loading {', '.join(map(str, paths))} ..."):
        engine = open_engine(settings, specs, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    console.print(f"loaded {escape(engine.source)}", style="dim", soft_wrap=True)
    app = create_app(
        engine, max_new_tokens_limit=settings.max_new_tokens, adapter_roots=settings.adapter_roots,
        gateway=gateway, request_log=request_log,
    )
    _follow_registry(engine)
    names = list(engine.models)
    _print_usage(names[-1] if len(names) > 1 else names[0], f"http://{_url_host(settings.host)}:{settings.port}/v1")
    if len(names) > 1:
        console.print(f"models: {', '.join(escape(n) for n in names)}", soft_wrap=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def _follow_registry(engine) -> None:
    """Served NAME@ALIAS names follow promotions and rollbacks of that alias (hf backend)."""
    followed = {name: m.follows for name, m in engine.models.items() if getattr(m, "follows", None)}
    if not followed:
        return
    if not hasattr(engine, "replace_adapter"):
        console.print(f"[yellow]warning:[/] this backend serves {', '.join(followed)} as registered now; it does not follow "
                      "later promotions (the hf backend does)", soft_wrap=True)
        return
    from tunekit.serve.follow import AliasFollower

    AliasFollower(engine, followed).start()
    console.print(f"following the registry for {', '.join(escape(f) for f in followed.values())}", style="dim", soft_wrap=True)


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
    api_key: str | None = None,
) -> str:
    """Send one message to an OpenAI-compatible server and return the answer text (`api_key`: for a
    server with keys; none: a placeholder, which a server without keys accepts)."""
    try:
        import openai
    except ImportError:
        raise TunekitError("`tunekit chat` needs the `openai` package", hint="pip install openai") from None
    base_url = _api_url(url)
    client = openai.OpenAI(base_url=base_url, api_key=api_key or PLACEHOLDER_API_KEY, max_retries=0, timeout=timeout_s)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    try:
        if model is None:
            served = client.models.list().data
            if not served:
                raise TunekitError(f"the server at {base_url} serves no model")
            adapters = [m.id for m in served if getattr(m, "parent", None)]
            model = adapters[0] if len(adapters) == 1 else served[0].id  # a served run: its adapter
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
    model: Annotated[
        Optional[str], typer.Option(help="Model name (default: the one adapter the server serves, else the first model listed).")
    ] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt sent before the message.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Most tokens to generate (default: the server's).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature; 0 is greedy and repeatable.")] = 0.0,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="TUNEKIT_API_KEY", help="API key, for a server started with keys.", show_default=False)
    ] = None,
) -> None:
    """Send one message to a running `tunekit serve` (or any OpenAI-compatible server) and print the answer."""
    typer.echo(send_chat(message, url=url, model=model, system=system, max_tokens=max_tokens, temperature=temperature, api_key=api_key))


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve a run or model over an OpenAI-compatible HTTP API.")(serve_command)
    app.command("chat", help="Send one message to a running server and print the answer.")(chat_command)
