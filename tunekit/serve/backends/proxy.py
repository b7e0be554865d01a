"""The `vllm` serving backend: tunekit's gateway in front of an OpenAI-compatible upstream.

`open_vllm` starts `vllm serve BASE --enable-lora --lora-modules name=path ...` on a loopback port
and waits for its /health (or takes `serve.upstream_url`, a server that already runs); the
`ProxyEngine` then forwards every request to it, streaming, so keys, limits, the request log and
the metrics stay tunekit's. Upstream answers are always streamed (with usage), whatever the client
asked: tunekit sees the first token's time and the upstream's own token counts, which the request
log and metrics record. A client that goes away closes the upstream stream, which stops it.

The prompt is forwarded as the client sent it (messages or text); the upstream applies its chat
template. Prompt-length limits are checked with the base's tokenizer when it is known (vllm
started here, or `serve.base_model`), and are otherwise the upstream's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunekit.errors import TunekitError
from tunekit.serve.engine import Event, Generation, Sampling, ServedModel, UnknownModelError, UpstreamError

VLLM_HINT = "install the vLLM extra on a machine with a CUDA GPU: pip install 'tunekit[vllm]'; or set serve.upstream_url"
UPSTREAM_KEY_ENV = "TUNEKIT_UPSTREAM_API_KEY"  # the upstream's API key, when it wants one (never in a YAML file)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)  # the --max-lora-rank values vLLM accepts


class ForwardedPrompt(list):
    """What the app passes from encode_* to submit: the local token ids (for length limits; empty when
    no tokenizer is known) and the request body fields the upstream gets."""

    def __init__(self, ids: list[int], body: dict):
        super().__init__(ids)
        self.body = body


class UpstreamGeneration(Generation):
    """A Generation whose events come from the upstream; `accepted` waits for its answer's headers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._accepted: asyncio.Future = self._loop.create_future()

    def _accept(self, error: BaseException | None) -> None:
        if not self._accepted.done():
            self._accepted.set_result(error)

    async def accepted(self) -> None:
        error = await self._accepted
        if error is not None:
            raise error


class ProxyEngine:
    """Forwards requests to an OpenAI-compatible server at `upstream_url` (its /v1 URL)."""

    def __init__(self, upstream_url: str, *, tokenizer=None, process: subprocess.Popen | None = None, log_path: Path | None = None):
        self.upstream_url = upstream_url.rstrip("/")
        self.tokenizer = tokenizer
        self.process, self.log_path = process, log_path
        key = os.environ.get(UPSTREAM_KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.models: dict[str, ServedModel] = {}
        self.queue_depth = 0
        self._refreshed_at = 0.0
        self.refresh_models()
        if not self.models:
            raise TunekitError(f"the upstream server at {self.upstream_url} serves no model")

    # ------------------------------------------------------------ models

    def refresh_models(self) -> None:
        """/v1/models as the upstream lists it (adapters have a `parent`, as vLLM lists them)."""
        import httpx

        try:
            response = httpx.get(f"{self.upstream_url}/models", headers=self._headers, timeout=10)
            response.raise_for_status()
            listed = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise TunekitError(f"cannot list the models of the upstream server at {self.upstream_url}: {exc}") from None
        self._refreshed_at = time.monotonic()
        known = {}
        for card in listed:
            kind = "adapter" if card.get("parent") else "base"
            old = self.models.get(card["id"])
            known[card["id"]] = old or ServedModel(
                card["id"], kind, card.get("root") or self.upstream_url, card.get("parent"), card["id"], None,
                created=int(card.get("created") or time.time()),
            )
        self.models = known

    @property
    def name(self) -> str:
        bases = [m.name for m in self.models.values() if m.kind == "base"]
        return (bases or list(self.models))[0]

    @property
    def source(self) -> str:
        started = f" (vllm serve, pid {self.process.pid}, log {self.log_path})" if self.process else ""
        return f"{self.upstream_url}{started}: {', '.join(self.models)}"

    @property
    def context_length(self) -> int | None:
        return None  # the upstream's; it refuses prompts that do not fit

    def served(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None and time.monotonic() - self._refreshed_at > 1.0:  # loaded on the upstream since?
            self.refresh_models()
            served = self.models.get(name)
        if served is None:
            raise UnknownModelError(f"The model `{name}` does not exist. This server serves: {', '.join(self.models)}")
        return served

    def add_adapter(self, source) -> ServedModel:
        """Load an adapter on the upstream (vLLM's /v1/load_lora_adapter; vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""
        self._admin_post("load_lora_adapter", {"lora_name": source.name, "lora_path": str(source.path)})
        self.refresh_models()
        return self.served(source.name)

    def remove_adapter(self, name: str) -> None:
        if name not in self.models or self.models[name].kind != "adapter":
            raise UnknownModelError(f"no adapter named '{name}' is served")
        self._admin_post("unload_lora_adapter", {"lora_name": name})
        self.refresh_models()

    def _admin_post(self, route: str, body: dict) -> None:
        import httpx

        try:
            response = httpx.post(f"{self.upstream_url}/{route}", json=body, headers=self._headers, timeout=120)
        except httpx.HTTPError as exc:
            raise TunekitError(f"the upstream server at {self.upstream_url} cannot be reached: {exc}") from None
        if response.status_code >= 400:
            raise TunekitError(f"the upstream server refused {route} ({response.status_code}): {_error_message(response.content)}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    # ------------------------------------------------------------ requests

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"]) if self.tokenizer is not None else []

    def encode_chat(self, messages: list[dict], model: str | None = None) -> ForwardedPrompt:
        ids: list[int] = []
        if self.tokenizer is not None:
            ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        return ForwardedPrompt(ids, {"messages": messages})

    def encode_text(self, prompt: str) -> ForwardedPrompt:
        return ForwardedPrompt(self._ids(prompt), {"prompt": prompt})

    def submit(self, model: str, prompt: ForwardedPrompt, sampling: Sampling, *, n: int = 1, loop=None) -> Generation:
        if loop is None:
            raise TunekitError("the vllm backend answers requests of the HTTP app only (it needs its event loop)")
        served = self.served(model)
        gen = UpstreamGeneration(served, len(prompt), n, loop)
        body = {
            "model": model, **prompt.body, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "n": n, "stream": True, "stream_options": {"include_usage": True},
            **({"stop": sampling.stop} if sampling.stop else {}), **({"seed": sampling.seed} if sampling.seed is not None else {}),
        }
        route = "chat/completions" if "messages" in prompt.body else "completions"
        self.queue_depth += 1
        loop.create_task(self._forward(gen, route, body))
        return gen

    async def _forward(self, gen: UpstreamGeneration, route: str, body: dict) -> None:
        import httpx

        url = f"{self.upstream_url}/{route}"
        try:
            # A client per request: the engine outlives any one event loop (tests run several servers).
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0)) as client, client.stream(
                "POST", url, json=body, headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    status = response.status_code if response.status_code < 500 or response.status_code == 503 else 502
                    message = _error_message(await response.aread())
                    gen._accept(UpstreamError(status, f"the upstream server answered {response.status_code}: {message}"))
                    return
                gen._accept(None)
                await _relay(gen, response, chat="messages" in body)
        except UpstreamError as error:
            gen._accept(error)
            gen._fail(error)
        except httpx.HTTPError as exc:
            error = UpstreamError(502, f"the upstream server at {self.upstream_url} cannot be reached or broke off: {type(exc).__name__}: {exc}")
            gen._accept(error)
            if gen._open:
                gen._fail(error)
        except Exception as exc:  # a malformed upstream answer fails this request, not the server
            error = UpstreamError(502, f"the upstream server's answer could not be read: {type(exc).__name__}: {exc}")
            gen._accept(error)
            gen._fail(error)
        finally:
            self.queue_depth -= 1


async def _relay(gen: UpstreamGeneration, response, *, chat: bool) -> None:
    """Upstream SSE chunks -> the Generation's events; each choice's last event waits for the usage
    chunk, so the request's token counts are the upstream's when the app records them."""
    counts = [0] * gen.n
    finals: dict[int, tuple[str, str]] = {}
    usage = None
    async for line in response.aiter_lines():
        if gen.cancelled:
            return  # leaving the block closes the upstream stream, which stops its generation
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise UpstreamError(502, f"the upstream server failed mid-answer: {_error_message(data.encode())}")
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            index = choice["index"]
            text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            text = text or ""
            counts[index] += 1 if text else 0
            if choice.get("finish_reason"):
                finals[index] = (text, choice["finish_reason"])
            elif text:
                gen._push(Event(index, text, None, counts[index]))
    if usage:
        gen.prompt_tokens = int(usage.get("prompt_tokens", gen.prompt_tokens))
        total = int(usage.get("completion_tokens", sum(counts)))
        counts[0] += total - sum(counts)  # per-choice counts from chunks; the total is the upstream's
    for index in range(gen.n):
        text, finish = finals.get(index, ("", "stop"))
        gen._push(Event(index, text, finish, counts[index]))


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        return str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return raw.decode("utf-8", errors="replace")[:300]


# ---------------------------------------------------------------- vllm serve


def vllm_command() -> list[str]:
    """How to run vLLM's CLI here, or TunekitError naming the extra."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    found = shutil.which("vllm")
    if found:
        return [found]
    raise TunekitError("the vllm backend needs vLLM, which is not installed", hint=VLLM_HINT)


def _lora_rank(adapter_dir: str) -> int:
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    return int(config.get("r") or 8)


def vllm_arguments(base_path: str, base_name: str, adapters: list, port: int, extra: list[str]) -> list[str]:
    """`vllm serve` arguments for one base and its LoRA adapters on a loopback port."""
    args = ["serve", base_path, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", base_name]
    if adapters:
        rank = max(_lora_rank(a.path) for a in adapters)
        args += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(next(r for r in LORA_RANKS if r >= rank))]
        args += ["--lora-modules", *(f"{a.name}={a.path}" for a in adapters)]
    return args + list(extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen | None, timeout_s: float, log_path: Path | None = None) -> None:
    """Poll `url` (vLLM's /health) until it answers 200; TunekitError if the process dies or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:] if log_path and log_path.is_file() else ""
            raise TunekitError(f"`vllm serve` exited with code {process.returncode} before it was healthy:\n{tail}", hint=f"full log: {log_path}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    if process is not None:
        process.terminate()
    raise TunekitError(f"`vllm serve` was not healthy at {url} after {timeout_s:.0f} s", hint="raise serve.upstream_start_timeout_s, or see its log")


def open_vllm(specs: list, settings, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ProxyEngine:
    """The vllm backend: forward to `settings.upstream_url`, or start `vllm serve` on `specs`' base and adapters."""
    from tunekit.serve.sources import Source, plan, resolve_source

    tokenizer = _tokenizer(settings.base_model, trust_remote_code) if settings.base_model else None
    if settings.upstream_url:
        wait_healthy(settings.upstream_url.rstrip("/").removesuffix("/v1") + "/health", None, settings.upstream_start_timeout_s)
        return ProxyEngine(settings.upstream_url, tokenizer=tokenizer)
    command = vllm_command()
    from tunekit.models import resolve_model

    sources = [s if isinstance(s, Source) else resolve_source(s, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) for s in specs]
    base, adapters = plan(sources)
    base_path = resolve_model(base.path, allow_pickle=base.allow_pickle)
    port = _free_port()
    log_path = Path(tempfile.mkdtemp(prefix="tunekit-vllm-")) / "vllm.log"
    env = {**os.environ, **({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if settings.adapter_roots else {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, *vllm_arguments(base_path, base.name, adapters, port, settings.vllm_args)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, settings.upstream_start_timeout_s, log_path)
        return ProxyEngine(f"http://127.0.0.1:{port}/v1", tokenizer=tokenizer or _tokenizer(base_path, base.trust_remote_code),
                           process=process, log_path=log_path)
    except BaseException:
        if process.poll() is None:
            process.terminate()
        raise


def _tokenizer(reference: str, trust_remote_code: bool) -> Any:
    from tunekit.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(reference), trust_remote_code=trust_remote_code)
