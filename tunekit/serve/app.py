"""The HTTP API: OpenAI's /v1/models and /v1/chat/completions (non-streaming), plus /health.

Every error, including FastAPI's own validation errors, is returned in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` so OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunekit.serve.engine import ChatTemplateError, Engine, PromptTooLongError
from tunekit.serve.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)

logger = logging.getLogger("tunekit.serve")

_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error", 500: "server_error"}
_MAX_REPORTED_PROBLEMS = 3


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    detail = ErrorDetail(message=message, type=_ERROR_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status)


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
    return error_response(exc.status, exc.message, exc.param, exc.code)


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("chat completion failed")
    return error_response(500, f"the server failed to answer: {type(exc).__name__}: {exc}")


def _check_model(engine: Engine, requested: str) -> None:
    if requested != engine.name:
        raise APIError(
            404,
            f"The model `{requested}` does not exist. This server serves: {engine.name}",
            param="model",
            code="model_not_found",
        )


def _token_budget(request: ChatCompletionRequest, limit: int) -> int:
    budget = request.token_budget or limit
    if budget > limit:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise APIError(400, f"{param}: {budget} is above this server's limit of {limit} tokens", param=param)
    return budget


def create_app(engine: Engine, max_new_tokens_limit: int = 256) -> FastAPI:
    """An OpenAI-compatible app around one engine; `max_new_tokens_limit` is the default and cap of max_tokens."""
    app = FastAPI(title=f"tunekit: {engine.name}", docs_url="/docs", redoc_url=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(Exception, _unexpected_error)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": engine.name}

    @app.get("/v1/models")
    def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=engine.name, created=engine.created)])

    @app.get("/v1/models/{model}")
    def get_model(model: str) -> ModelCard:
        _check_model(engine, model)
        return ModelCard(id=engine.name, created=engine.created)

    # A plain `def`: FastAPI runs it in its thread pool, so generation never blocks the event loop.
    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest) -> ChatCompletionResponse:
        _check_model(engine, request.model)
        budget = _token_budget(request, max_new_tokens_limit)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            result = engine.chat(
                messages,
                max_tokens=budget,
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                stop=request.stop,
                seed=request.seed,
            )
        except PromptTooLongError as exc:
            raise APIError(400, exc.message, param="messages", code="context_length_exceeded") from None
        except ChatTemplateError as exc:
            raise APIError(400, exc.message, param="messages") from None
        return ChatCompletionResponse(
            model=engine.name,
            choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
        )

    return app
