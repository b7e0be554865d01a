"""The serving gateway: who is asking (API keys), how much they may ask (rate, concurrency, body and
prompt size, time), and every refusal in OpenAI's error shape.

How app.py uses it:

```python
gateway = Gateway.from_settings(GatewaySettings(...))   # keys from keys_file + environment
gateway.check_exposure(host)                              # before listening: no open server off loopback
gateway.install(app)                                      # GatewayError -> OpenAI-shaped JSON + headers
app.add_middleware(BodySizeLimit, max_bytes=gateway.settings.max_body_bytes)

@app.post("/v1/chat/completions")
async def chat(request: ChatCompletionRequest, principal: Principal = Depends(gateway.user)):
    gateway.check_prompt_length(tokens=n_prompt_tokens)   # 400 context_length_exceeded
    async with gateway.admit(principal):                  # 429 + Retry-After, or a held slot
        ...

@app.post("/v1/load_lora_adapter")
async def load(..., principal: Principal = Depends(gateway.admin)):  # 401 / 403
```

A streamed answer holds its slot until the stream ends: `slot = gateway.admit(principal)` and
`slot.release()` in the generator's `finally` (release is idempotent).

With no key configured the server is open (every request is the principal `anonymous`, a user),
and the admin routes refuse with 403: nothing may change a server's state without a key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tunekit.errors import TunekitError
from tunekit.serve.keys import ENV_ADMIN_KEY, ENV_USER_KEYS, KeyStore
from tunekit.serve.protocol import ErrorDetail, ErrorResponse

ANONYMOUS = "anonymous"
T = TypeVar("T")


class GatewaySettings(BaseModel):
    """Gateway settings; per-key `rate_per_min` / `max_concurrent` in the keys file override the defaults."""

    model_config = ConfigDict(extra="forbid")

    keys_file: Path | None = Field(None, description="YAML/JSON file of API keys (id, key or key_sha256, role, limits).")
    rate_per_min: float | None = Field(None, gt=0, description="Default requests per minute per key; unset: no limit.")
    burst: int | None = Field(
        None, gt=0, description="Requests a key may send at once after being idle; default: one minute's worth."
    )
    max_concurrent: int | None = Field(None, gt=0, description="Default requests in flight at once per key; unset: no limit.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body in bytes (413 above it).")
    max_prompt_tokens: int | None = Field(None, gt=0, description="Longest prompt in tokens (400 above it); unset: the model's context.")
    max_prompt_chars: int | None = Field(None, gt=0, description="Longest prompt in characters (400 above it); unset: no limit.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take (504 after it).")
    allow_open_remote: bool = Field(
        False, description="Allow a server without API keys on an interface other than loopback."
    )


class GatewayError(Exception):
    """A refusal answered in OpenAI's error shape, with optional response headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def gateway_error_handler(_: Request, exc: GatewayError) -> JSONResponse:
    return exc.response()


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key id (never the key) and its role and limits."""

    key_id: str
    role: str = "user"
    rate_per_min: float | None = None
    max_concurrent: int | None = None
    burst: int | None = None  # token bucket capacity; None: one minute's worth (rate_per_min)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# ---------------------------------------------------------------- plain checks


def check_body_size(n_bytes: int, max_bytes: int) -> None:
    """413 when a request body of `n_bytes` is over `max_bytes`."""
    if n_bytes > max_bytes:
        raise GatewayError(
            413,
            f"the request body is {n_bytes:,} bytes, above this server's limit of {max_bytes:,} bytes",
            code="request_too_large",
        )


def check_prompt_length(
    *,
    tokens: int | None = None,
    chars: int | None = None,
    max_tokens: int | None = None,
    max_chars: int | None = None,
    param: str = "messages",
) -> None:
    """400 `context_length_exceeded` when the prompt is over a token or character limit (None: no limit)."""
    if tokens is not None and max_tokens is not None and tokens > max_tokens:
        raise GatewayError(
            400,
            f"the prompt is {tokens:,} tokens, above this server's limit of {max_tokens:,} tokens; shorten the {param}",
            code="context_length_exceeded",
            param=param,
        )
    if chars is not None and max_chars is not None and chars > max_chars:
        raise GatewayError(
            400,
            f"the prompt is {chars:,} characters, above this server's limit of {max_chars:,} characters; shorten the {param}",
            code="context_length_exceeded",
            param=param,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- limits


class _Bucket:
    """A token bucket: `capacity` requests at once, refilled at `rate_per_s`."""

    __slots__ = ("capacity", "rate_per_s", "tokens", "updated")

    def __init__(self, capacity: float, rate_per_s: float, now: float):
        self.capacity, self.rate_per_s, self.tokens, self.updated = capacity, rate_per_s, capacity, now

    def take(self, now: float) -> float:
        """0 when a request may go now (and takes its token), else the seconds until it may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


def _rate_headers(rate_per_min: float, bucket: _Bucket) -> dict[str, str]:
    """OpenAI's names: the limit, what is left now, and when the bucket is full again."""
    reset_s = (bucket.capacity - bucket.tokens) / bucket.rate_per_s if bucket.rate_per_s > 0 else 0.0
    return {
        "x-ratelimit-limit-requests": f"{rate_per_min:g}",
        "x-ratelimit-remaining-requests": str(max(0, math.floor(bucket.tokens))),
        "x-ratelimit-reset-requests": f"{reset_s:.3f}s",
    }


class Admission:
    """A held concurrency slot. `release()` is idempotent; usable as a sync or async context manager.

    `headers` are OpenAI's x-ratelimit-* headers for a key with a rate limit (limit per minute,
    requests left in the bucket, time until it is full again), empty otherwise."""

    def __init__(self, gateway: "Gateway", key_id: str, headers: dict[str, str] | None = None):
        self._gateway, self.key_id, self._held = gateway, key_id, True
        self.headers = headers or {}

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gateway._release(self.key_id)

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()

    async def __aenter__(self) -> "Admission":
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.release()


class Gateway:
    """Keys, per-key limits and request limits of one server. `clock` is injectable for tests."""

    def __init__(self, settings: GatewaySettings | None = None, keys: KeyStore | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings or GatewaySettings()
        self.keys = keys if keys is not None else KeyStore([])
        self._clock = clock
        self._lock = threading.Lock()  # admit() may be called from FastAPI's thread pool too
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: GatewaySettings | None = None, env: Mapping[str, str] | None = None, **kwargs: Any) -> "Gateway":
        """A gateway whose keys come from `settings.keys_file` and the environment (os.environ by default)."""
        settings = settings or GatewaySettings()
        return cls(settings, KeyStore.load(settings.keys_file, env), **kwargs)

    @property
    def open(self) -> bool:
        """No key configured: every request is served as the anonymous user."""
        return not self.keys.configured

    @property
    def timeout_s(self) -> float:
        return self.settings.request_timeout_s

    def check_exposure(self, host: str) -> None:
        """Refuse to listen beyond loopback without keys, unless `allow_open_remote` says so."""
        if self.open and not is_loopback(host) and not self.settings.allow_open_remote:
            raise TunekitError(
                f"refusing to serve on {host} without API keys: anyone who reaches this machine could use the model",
                hint=f"set {ENV_USER_KEYS} / {ENV_ADMIN_KEY} or a keys_file, listen on 127.0.0.1, "
                "or set allow_open_remote: true",
            )

    # ------------------------------------------------------------ who

    def authenticate(self, authorization: str | None, *, admin: bool = False) -> Principal:
        """The principal of an `Authorization: Bearer <key>` header; 401 / 403 as GatewayError."""
        if admin and not self.keys.has_admin:
            if not self.open:
                self._key_of(authorization)  # a wrong key is still a 401, not a hint about the config
            raise GatewayError(
                403,
                f"no admin key configured: this route changes the server's state; set {ENV_ADMIN_KEY} "
                "or add a key with role: admin to the keys file",
                type="permission_error",
                code="no_admin_key_configured",
            )
        if self.open:
            return Principal(ANONYMOUS, "user", self.settings.rate_per_min, self.settings.max_concurrent, self.settings.burst)
        principal = self._key_of(authorization)
        if admin and not principal.is_admin:
            raise GatewayError(
                403,
                f"the key '{principal.key_id}' is a user key; this route needs an admin key",
                type="permission_error",
                code="admin_key_required",
            )
        return principal

    def _key_of(self, authorization: str | None) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(
                401,
                "no API key provided: send it in an Authorization header using Bearer auth "
                "(Authorization: Bearer YOUR_KEY)",
                code="missing_api_key",
                headers=challenge,
            )
        key = self.keys.lookup(token)
        if key is None:
            raise GatewayError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)
        return Principal(
            key.id,
            key.role,
            key.rate_per_min if key.rate_per_min is not None else self.settings.rate_per_min,
            key.max_concurrent if key.max_concurrent is not None else self.settings.max_concurrent,
            key.burst if key.burst is not None else self.settings.burst,
        )

    def user(self, request: Request) -> Principal:
        """FastAPI dependency for the completion routes: `Depends(gateway.user)`."""
        return self.authenticate(request.headers.get("authorization"))

    def admin(self, request: Request) -> Principal:
        """FastAPI dependency for state-changing routes: `Depends(gateway.admin)`."""
        return self.authenticate(request.headers.get("authorization"), admin=True)

    # ------------------------------------------------------------ how much

    def admit(self, principal: Principal) -> Admission:
        """Take a concurrency slot and a rate token for `principal`, or raise 429 with Retry-After.

        A request refused for concurrency does not spend a rate token."""
        key_id = principal.key_id
        with self._lock:
            in_flight = self._in_flight.get(key_id, 0)
            if principal.max_concurrent is not None and in_flight >= principal.max_concurrent:
                raise GatewayError(
                    429,
                    f"too many requests in flight for key '{key_id}': the limit is {principal.max_concurrent} at once",
                    type="requests",
                    code="concurrency_limit_exceeded",
                    headers={"Retry-After": "1"},
                )
            headers: dict[str, str] = {}
            if principal.rate_per_min is not None:
                bucket = self._bucket(principal)
                wait_s = bucket.take(self._clock())
                if wait_s > 0:
                    retry = max(1, math.ceil(wait_s - 1e-6))  # 10.000000001 s is "10", not "11"
                    raise GatewayError(
                        429,
                        f"rate limit reached for key '{key_id}': {principal.rate_per_min:g} requests per minute; "
                        f"try again in {retry} s",
                        type="requests",
                        code="rate_limit_exceeded",
                        headers={"Retry-After": str(retry), **_rate_headers(principal.rate_per_min, bucket)},
                    )
                headers = _rate_headers(principal.rate_per_min, bucket)
            self._in_flight[key_id] = in_flight + 1
        return Admission(self, key_id, headers)

    def _bucket(self, principal: Principal) -> _Bucket:
        rate = principal.rate_per_min or 0.0
        capacity = float(principal.burst or max(1, math.ceil(rate)))
        bucket = self._buckets.get(principal.key_id)
        if bucket is None or bucket.rate_per_s != rate / 60 or bucket.capacity != capacity:
            bucket = self._buckets[principal.key_id] = _Bucket(capacity, rate / 60, self._clock())
        return bucket

    def _release(self, key_id: str) -> None:
        with self._lock:
            left = self._in_flight.get(key_id, 0) - 1
            if left > 0:
                self._in_flight[key_id] = left
            else:
                self._in_flight.pop(key_id, None)

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)

    def check_prompt_length(self, *, tokens: int | None = None, chars: int | None = None, param: str = "messages") -> None:
        check_prompt_length(
            tokens=tokens,
            chars=chars,
            max_tokens=self.settings.max_prompt_tokens,
            max_chars=self.settings.max_prompt_chars,
            param=param,
        )

    def check_body_size(self, n_bytes: int) -> None:
        check_body_size(n_bytes, self.settings.max_body_bytes)

    async def with_timeout(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, or 504 when it takes longer than request_timeout_s (it is cancelled)."""
        try:
            return await asyncio.wait_for(awaitable, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise self.timeout_error() from None

    def timeout_error(self) -> GatewayError:
        return GatewayError(
            504,
            f"the request took longer than this server's limit of {self.settings.request_timeout_s:g} s",
            type="server_error",
            code="request_timeout",
        )

    def install(self, app: FastAPI) -> None:
        """Answer every GatewayError raised in `app` in OpenAI's shape, with its headers."""
        app.add_exception_handler(GatewayError, gateway_error_handler)


# ---------------------------------------------------------------- body size, before the body is read


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`. A body with Content-Length is judged by it
    before it is read; a chunked body is read here up to the limit and handed on only when within it
    (FastAPI would turn an error raised while it reads the body into its own 400)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.strip().isdigit():
            try:
                check_body_size(int(length), self.max_bytes)
            except GatewayError as exc:
                await exc.response()(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                error = GatewayError(
                    413, f"the request body is over this server's limit of {self.max_bytes:,} bytes", code="request_too_large"
                )
                await error.response()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: http.disconnect, for streaming responses

        await self.app(scope, replay, send)
