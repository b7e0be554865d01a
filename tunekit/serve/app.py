"""The HTTP API: OpenAI's /v1/models, /v1/chat/completions and /v1/completions (streaming or not),
vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, and /health.

Every error, including FastAPI's own validation errors, is returned in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` so OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunekit.errors import TunekitError
from tunekit.serve.gateway import BodySizeLimit, Gateway, GatewayError, Principal
from tunekit.serve.metrics import ServeMetrics
from tunekit.serve.requestlog import RequestLog, RequestRecord
from tunekit.serve.engine import ChatTemplateError, Engine, Generation, PromptTooLongError, Sampling, UnknownModelError, UpstreamError
from tunekit.serve.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorDetail,
    ErrorResponse,
    LoadAdapterRequest,
    ModelCard,
    ModelList,
    UnloadAdapterRequest,
    Usage,
)

logger = logging.getLogger("tunekit.serve")
# Which registry version answered a request for NAME@ALIAS (also in the request log's `version`).
VERSION_HEADER = "x-tunekit-model-version"

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
    502: "server_error", 503: "server_error", 504: "timeout_error",
}
_MAX_REPORTED_PROBLEMS = 3


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    detail = ErrorDetail(message=message, type=_ERROR_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers)


def _param_path(loc: tuple) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role' (OpenAI's spelling of a parameter)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(err: dict) -> tuple[str, str | None]:
    param = _param_path(tuple(err.get("loc", ()))) or None
    if err["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if err["type"] == "json_invalid":
        return f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", None
    if err["type"] == "model_attributes_type" and param is None:
        return "the request body must be a JSON object", None
    if err["type"] == "missing":
        return f"'{param}' is a required property", param
    message = err["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [_problem(e) for e in exc.errors()]
    if not problems:
        return error_response(400, "invalid request")
    message = "; ".join(m for m, _ in problems[:_MAX_REPORTED_PROBLEMS])
    if len(problems) > _MAX_REPORTED_PROBLEMS:
        message += f" (and {len(problems) - _MAX_REPORTED_PROBLEMS} more)"
    return error_response(400, message, param=problems[0][1])


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


def _upstream_error(_: Request, exc: UpstreamError) -> JSONResponse:
    return error_response(exc.status, exc.message)


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("request failed")
    return error_response(500, f"the server failed to answer: {type(exc).__name__}: {exc}")


def _token_budget(request, limit: int) -> int:
    budget = request.token_budget or limit
    if budget > limit:
        param = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
        raise APIError(400, f"{param}: {budget} is above this server's limit of {limit} tokens", param=param)
    return budget


def _sampling(request, limit: int) -> Sampling:
    return Sampling(
        max_tokens=_token_budget(request, limit),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=request.stop,
        seed=request.seed,
    )


def _usage(gen: Generation) -> Usage:
    completion = gen.completion_tokens
    return Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=completion, total_tokens=gen.prompt_tokens + completion)


def _sse(payload) -> str:
    return f"data: {payload.model_dump_json(exclude_none=False)}\n\n"


def inside_roots(raw: str, roots: list[Path]) -> Path:
    """`raw` as a resolved path, only when it lies under one of `roots` (after following symlinks);
    400 otherwise. A request never names a file outside the folders the operator configured."""
    if not roots:
        raise APIError(403, "loading adapters at run time is off: the server has no adapter roots (serve.adapter_roots)")
    if ".." in Path(raw).parts:
        raise APIError(400, "lora_path must not contain '..'", param="lora_path")
    candidates = [Path(raw)] if Path(raw).is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        for root in roots:
            if resolved.is_relative_to(root.resolve()):
                if not resolved.exists():
                    raise APIError(400, f"lora_path {raw} does not exist under the adapter roots", param="lora_path")
                return resolved
    raise APIError(400, f"lora_path {raw} is outside the configured adapter roots", param="lora_path")


class _Accounting:
    """One request's trace: metrics and a request-log row when it ends, however it ends."""

    def __init__(self, metrics: ServeMetrics, log: RequestLog | None, model: str, principal: Principal, stream: bool, prompt):
        self.metrics, self.log, self.model, self.principal, self.stream, self.prompt = metrics, log, model, principal, stream, prompt
        self.started = time.monotonic()
        self.gen: Generation | None = None
        self.adapter = ""
        self.closed = False
        self.slot = None  # the gateway's Admission, whose rate-limit headers the response carries

    @property
    def version(self) -> str | None:
        """The registry version that answered (the one the request started on), when it is known."""
        served = self.gen.model if self.gen is not None else None
        return str(served.version) if served is not None and getattr(served, "version", None) is not None else None

    def headers(self) -> dict[str, str]:
        limits = self.slot.headers if self.slot is not None else {}
        return {**limits, **({VERSION_HEADER: self.version} if self.version else {})}

    def finish(self, status: int, ident: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        gen = self.gen
        elapsed = time.monotonic() - self.started
        ttft = gen.first_token_at - self.started if gen is not None and gen.first_token_at is not None else None
        done = gen.completions() if gen is not None else []
        prompt_tokens = gen.prompt_tokens if gen is not None else 0
        completion_tokens = gen.completion_tokens if gen is not None else 0
        version = self.version
        self.metrics.record(
            model=self.model, adapter=self.adapter, version=version or "", status=status, duration_s=elapsed if gen else None, ttft_s=ttft,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        )
        if self.log is not None:
            finish = ",".join(sorted({c.finish_reason for c in done})) or None
            self.log.write(RequestRecord(
                model=self.model, status=status, adapter=self.adapter or None, version=version, key_id=self.principal.key_id,
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=elapsed, ttft_s=ttft,
                finish_reason=finish, stream=self.stream, prompt=self.prompt,
                output="\n".join(c.text for c in done) if done else None, **({"id": ident} if ident else {}),
            ))


def create_app(
    engine: Engine,
    max_new_tokens_limit: int = 256,
    *,
    adapter_roots: list[Path] | None = None,
    gateway: Gateway | None = None,
    metrics: ServeMetrics | None = None,
    request_log: RequestLog | None = None,
) -> FastAPI:
    """An OpenAI-compatible app around an engine.

    `max_new_tokens_limit` is the default and cap of max_tokens; adapters load at run time only from
    under `adapter_roots`; `gateway` holds the API keys and limits (default: no keys, no limits, and
    no admin routes); `metrics` is served at /metrics; `request_log` gets one row per completion."""
    app = FastAPI(title=f"tunekit: {engine.name}", docs_url="/docs", redoc_url=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(UpstreamError, _upstream_error)
    app.add_exception_handler(Exception, _unexpected_error)
    gateway = gateway or Gateway()
    gateway.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=gateway.settings.max_body_bytes)
    metrics = metrics or ServeMetrics()
    metrics.set_queue_depth_function(lambda: engine.queue_depth)
    roots = [Path(r) for r in adapter_roots or []]
    app.state.engine, app.state.gateway, app.state.metrics, app.state.request_log = engine, gateway, metrics, request_log

    def card(name: str) -> ModelCard:
        served = engine.served(name)
        return ModelCard(id=served.name, created=served.created, root=served.root, parent=served.parent)

    @app.get("/health")
    def health() -> dict:
        versions = {name: m.version for name, m in list(engine.models.items()) if getattr(m, "version", None) is not None}
        return {"status": "ok", "model": engine.name, "models": list(engine.models), "queue_depth": engine.queue_depth,
                **({"versions": versions} if versions else {})}

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    def list_models(principal: Principal = Depends(gateway.user)) -> ModelList:
        return ModelList(data=[card(name) for name in list(engine.models)])

    @app.get("/v1/models/{model:path}")
    def get_model(model: str, principal: Principal = Depends(gateway.user)) -> ModelCard:
        try:
            return card(model)
        except UnknownModelError as exc:
            raise APIError(404, exc.message, param="model", code="model_not_found") from None

    def start(track: _Accounting, encode, sampling: Sampling, n: int, param: str) -> Generation:
        try:
            served = engine.served(track.model)
            track.adapter = served.adapter if served.kind == "adapter" else ""
            prompt = encode(track.model)
            gateway.check_prompt_length(tokens=len(prompt), param=param)
            track.gen = engine.submit(track.model, prompt, sampling, n=n, loop=asyncio.get_running_loop())
            return track.gen
        except UnknownModelError as exc:
            raise APIError(404, exc.message, param="model", code="model_not_found") from None
        except PromptTooLongError as exc:
            raise APIError(400, exc.message, param=param, code="context_length_exceeded") from None
        except ChatTemplateError as exc:
            raise APIError(400, exc.message, param=param) from None

    async def answer(request, principal: Principal, encode, param: str, prompt_content, respond, chunk_of):
        """Admit, generate and account for one completion request (chat or text)."""
        track = _Accounting(metrics, request_log, request.model, principal, bool(request.stream), prompt_content)
        slot = None
        try:
            slot = track.slot = gateway.admit(principal)
            gen = start(track, encode, _sampling(request, max_new_tokens_limit), request.n or 1, param)
            await gen.accepted()  # a proxy backend's upstream may refuse it: answer with its status, not a broken stream
        except (APIError, GatewayError, UpstreamError) as exc:
            if slot is not None:
                slot.release()
            track.finish(exc.status)
            raise
        ident = f"{'chatcmpl' if param == 'messages' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return stream(gen, track, slot, include_usage, lambda *a: chunk_of(ident, created, *a))
        status = 500
        try:
            with metrics.in_flight(track.model, track.adapter):
                await gateway.with_timeout(collect(gen))
            status = 200
            body = respond(ident, created, gen)
            headers = track.headers()
            return JSONResponse(jsonable_encoder(body), headers=headers) if headers else body
        except (GatewayError, UpstreamError) as exc:
            status = exc.status
            raise
        finally:
            slot.release()
            track.finish(status, ident)

    async def collect(gen: Generation) -> None:
        try:
            async for _ in gen.aevents():
                pass
        except asyncio.CancelledError:
            gen.cancel()  # timed out, or the client went away
            raise

    def stream(gen: Generation, track: _Accounting, slot, include_usage: bool, chunk_of) -> StreamingResponse:
        deadline = time.monotonic() + gateway.timeout_s

        async def events():
            status = 499  # the client went away before the end
            try:
                with metrics.in_flight(track.model, track.adapter):
                    for index in range(gen.n):
                        first = chunk_of(index, "", None, True)
                        if first is not None:
                            yield _sse(first)
                    async for event in gen.aevents():
                        if time.monotonic() > deadline:
                            status = 504
                            yield f"data: {json.dumps(gateway.timeout_error().body())}\n\n"
                            return
                        if event.finish_reason == "cancelled":
                            continue
                        yield _sse(chunk_of(event.index, event.text, event.finish_reason, False))
                    if include_usage:
                        yield _sse(chunk_of(None, "", None, False).model_copy(update={"choices": [], "usage": _usage(gen)}))
                    yield "data: [DONE]\n\n"
                    status = 200
            finally:
                gen.cancel()  # the client went away (or we are done): stop generating for it
                slot.release()
                track.finish(status)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **track.headers()})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, principal: Principal = Depends(gateway.user)):
        messages = [{"role": m.role, "content": m.content} for m in request.messages]

        def respond(ident, created, gen):
            return ChatCompletionResponse(
                id=ident, created=created, model=request.model,
                choices=[
                    Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
                    for i, c in enumerate(gen.completions())
                ],
                usage=_usage(gen),
            )

        def chunk(ident, created, index, text, finish, first):
            choices = [] if index is None else [
                ChunkChoice(index=index, delta=Delta(role="assistant", content="") if first else Delta(content=text or None),
                            finish_reason=finish)
            ]
            return ChatCompletionChunk(id=ident, created=created, model=request.model, choices=choices)

        encode = lambda name: engine.encode_chat(messages, name)  # noqa: E731
        return await answer(request, principal, encode, "messages", messages, respond, chunk)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, principal: Principal = Depends(gateway.user)):
        def respond(ident, created, gen):
            return CompletionResponse(
                id=ident, created=created, model=request.model,
                choices=[CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason) for i, c in enumerate(gen.completions())],
                usage=_usage(gen),
            )

        def chunk(ident, created, index, text, finish, first):
            if first:
                return None
            choices = [] if index is None else [CompletionChoice(index=index, text=text, finish_reason=finish)]
            return CompletionResponse(id=ident, created=created, model=request.model, choices=choices)

        encode = lambda name: _text_prompt(engine, name, request.prompt)  # noqa: E731
        return await answer(request, principal, encode, "prompt", request.prompt, respond, chunk)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: LoadAdapterRequest, principal: Principal = Depends(gateway.admin)) -> dict:
        from tunekit.serve.sources import resolve_source

        path = inside_roots(request.lora_path, roots)
        started = time.monotonic()
        try:
            source = resolve_source(str(path), allow_pickle=False)
            if source.kind != "adapter":
                raise APIError(400, f"{request.lora_path} holds a complete model, not an adapter", param="lora_path")
            source.name = request.lora_name
            if request.system_prompt is not None:
                source.system_prompt = request.system_prompt
            await asyncio.to_thread(engine.add_adapter, source)
        except TunekitError as exc:
            raise APIError(400, exc.message + (f" ({exc.hint})" if exc.hint else ""), param="lora_path") from None
        return {"status": "loaded", "lora_name": request.lora_name, "load_s": round(time.monotonic() - started, 3)}

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: UnloadAdapterRequest, principal: Principal = Depends(gateway.admin)) -> dict:
        try:
            await asyncio.to_thread(engine.remove_adapter, request.lora_name)
        except UnknownModelError as exc:
            raise APIError(404, exc.message, param="lora_name", code="model_not_found") from None
        return {"status": "unloaded", "lora_name": request.lora_name}

    return app


def _text_prompt(engine: Engine, model: str, prompt: str) -> list[int]:
    engine.served(model)  # 404 before tokenizing for a model that is not here
    return engine.encode_text(prompt)


@contextlib.contextmanager
def serve_in_background(app: FastAPI, *, host: str = "127.0.0.1", startup_timeout_s: float = 30.0):
    """Run `app` under uvicorn in a daemon thread on a free loopback port; yields the /v1 base URL
    and stops the server on exit. For notebooks, benchmarks and tests that need the real server
    in-process (`tunekit serve` runs uvicorn in the foreground instead)."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TunekitError(f"the server did not start on {host}:{port} within {startup_timeout_s:g} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
