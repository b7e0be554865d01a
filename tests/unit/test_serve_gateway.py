"""The serving gateway through a small FastAPI app: keys (401/403), limits (429 + Retry-After, 413,
400), all in OpenAI's error shape; the token bucket on an injected clock; concurrency with two
requests in flight at once."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tunekit.errors import TunekitError
from tunekit.serve.gateway import BodySizeLimit, Gateway, GatewayError, GatewaySettings, Principal
from tunekit.serve.keys import ApiKey, KeyStore, key_digest, keys_from_env, load_keys_file

USER_KEY = "sk-user-0123456789"
OTHER_KEY = "sk-other-0123456789"
ADMIN_KEY = "sk-admin-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(gateway: Gateway) -> FastAPI:
    app = FastAPI()
    gateway.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=gateway.settings.max_body_bytes)
    app.state.release = None  # an asyncio.Event that holds requests asking to wait

    @app.post("/v1/chat/completions")
    async def chat(body: dict, principal: Principal = Depends(gateway.user)) -> dict:
        gateway.check_prompt_length(chars=sum(len(m["content"]) for m in body["messages"]))
        async with gateway.admit(principal):
            if body.get("wait"):
                await app.state.release.wait()
            return {"key_id": principal.key_id, "role": principal.role}

    @app.post("/v1/load_lora_adapter")
    async def load(principal: Principal = Depends(gateway.admin)) -> dict:
        return {"loaded": True, "key_id": principal.key_id}

    return app


def keyed_gateway(**settings) -> Gateway:
    env = {"TUNEKIT_API_KEYS": f"team-a:{USER_KEY},team-b:{OTHER_KEY}", "TUNEKIT_ADMIN_KEY": ADMIN_KEY}
    return Gateway.from_settings(GatewaySettings(**settings), env=env, clock=FakeClock())


def chat(client: TestClient, key: str | None = None, content: str = "hi", **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **extra}, headers=headers)


def assert_openai_error(response: httpx.Response, status: int, code: str, type_: str = "invalid_request_error") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == type_
    return body["error"]["message"]


# ---------------------------------------------------------------- keys


def test_open_server_serves_anonymous_and_refuses_admin_routes():
    client = TestClient(make_app(Gateway(GatewaySettings(), KeyStore([]))))
    assert chat(client).json() == {"key_id": "anonymous", "role": "user"}
    message = assert_openai_error(client.post("/v1/load_lora_adapter"), 403, "no_admin_key_configured", "permission_error")
    assert "no admin key configured" in message


def test_missing_and_wrong_keys_are_401_without_echoing_the_key():
    client = TestClient(make_app(keyed_gateway()))
    missing = chat(client)
    assert "Bearer" in assert_openai_error(missing, 401, "missing_api_key")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = chat(client, key="sk-wrong-secret-value")
    assert_openai_error(wrong, 401, "invalid_api_key")
    assert "sk-wrong" not in wrong.text
    basic = client.post("/v1/chat/completions", json={"messages": []}, headers={"Authorization": f"Basic {USER_KEY}"})
    assert_openai_error(basic, 401, "missing_api_key")


def test_user_and_admin_roles():
    client = TestClient(make_app(keyed_gateway()))
    assert chat(client, USER_KEY).json() == {"key_id": "team-a", "role": "user"}
    assert chat(client, OTHER_KEY).json() == {"key_id": "team-b", "role": "user"}
    assert chat(client, ADMIN_KEY).json() == {"key_id": "admin", "role": "admin"}  # admin keys may also chat
    forbidden = client.post("/v1/load_lora_adapter", headers={"Authorization": f"Bearer {USER_KEY}"})
    assert "team-a" in assert_openai_error(forbidden, 403, "admin_key_required", "permission_error")
    allowed = client.post("/v1/load_lora_adapter", headers={"Authorization": f"bearer {ADMIN_KEY}"})
    assert allowed.json() == {"loaded": True, "key_id": "admin"}
    assert_openai_error(client.post("/v1/load_lora_adapter"), 401, "missing_api_key")


def test_user_keys_only_refuse_admin_routes_after_checking_the_key():
    gateway = Gateway.from_settings(env={"TUNEKIT_API_KEYS": f"team-a:{USER_KEY}"})
    client = TestClient(make_app(gateway))
    assert_openai_error(client.post("/v1/load_lora_adapter", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    refused = client.post("/v1/load_lora_adapter", headers={"Authorization": f"Bearer {USER_KEY}"})
    assert_openai_error(refused, 403, "no_admin_key_configured", "permission_error")


def test_keys_file_yaml_with_digests_limits_and_env_merged(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "keys:\n"
        f"  - {{id: acme, key_sha256: {key_digest(USER_KEY)}, rate_per_min: 2, max_concurrent: 3}}\n"
        f"  - {{id: ops, key: {ADMIN_KEY}, role: admin}}\n",
        encoding="utf-8",
    )
    gateway = Gateway.from_settings(
        GatewaySettings(keys_file=keys_file, max_concurrent=7), env={"TUNEKIT_API_KEYS": f"ci:{OTHER_KEY}"}
    )
    assert gateway.keys.ids == ["acme", "ops", "ci"]
    acme = gateway.authenticate(f"Bearer {USER_KEY}")
    assert acme == Principal("acme", "user", 2, 3)
    assert gateway.authenticate(f"Bearer {OTHER_KEY}") == Principal("ci", "user", None, 7)  # gateway defaults
    assert gateway.authenticate(f"Bearer {ADMIN_KEY}", admin=True).key_id == "ops"
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps([{"id": "j", "key": USER_KEY}]), encoding="utf-8")
    assert [k.id for k in load_keys_file(json_file)] == ["j"]


def test_bad_keys_file_reports_every_problem_by_entry(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "- {id: a, key: short}\n- {id: b, key: long-enough-key, role: root}\n- {id: c}\n- {id: d, key: abcdefghij, extra: 1}\n",
        encoding="utf-8",
    )
    with pytest.raises(TunekitError) as caught:
        load_keys_file(keys_file)
    message = caught.value.message
    assert "keys[0].key: String should have at least 8 characters" in message
    assert "keys[1].role: Input should be 'user' or 'admin'" in message
    assert "keys[2]: give exactly one of `key` and `key_sha256`" in message
    assert "keys[3].extra: Extra inputs are not permitted" in message
    assert "short" not in message.replace("should", "")  # the rejected key is not echoed back


def test_duplicate_ids_and_keys_are_refused_and_env_errors_hide_the_secret():
    with pytest.raises(TunekitError, match="key id 'x' is configured twice"):
        KeyStore([ApiKey("x", key_digest("k1")), ApiKey("x", key_digest("k2"))])
    with pytest.raises(TunekitError, match="the same key is configured twice"):
        KeyStore([ApiKey("x", key_digest("k1")), ApiKey("y", key_digest("k1"))])
    with pytest.raises(TunekitError) as caught:
        keys_from_env({"TUNEKIT_API_KEYS": "good:sk-1234567890,sk-bare-secret"})
    assert "item 2 is not `id:key`" in str(caught.value) and "sk-bare-secret" not in str(caught.value)


def test_the_key_is_never_in_a_repr():
    store = KeyStore(keys_from_env({"TUNEKIT_ADMIN_KEY": ADMIN_KEY}))
    (key,) = store._keys
    assert ADMIN_KEY not in repr(key) and key.digest not in repr(key) and "admin" in repr(key)


def test_open_server_only_on_loopback():
    open_gateway = Gateway()
    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        open_gateway.check_exposure(host)
    with pytest.raises(TunekitError, match="refusing to serve on 0.0.0.0 without API keys"):
        open_gateway.check_exposure("0.0.0.0")
    Gateway(GatewaySettings(allow_open_remote=True)).check_exposure("0.0.0.0")
    keyed_gateway().check_exposure("0.0.0.0")


# ---------------------------------------------------------------- limits


def test_token_bucket_refills_on_the_clock_with_retry_after():
    gateway = keyed_gateway(rate_per_min=2)  # bucket of 2, one token back every 30 s
    clock = gateway._clock
    client = TestClient(make_app(gateway))
    assert chat(client, USER_KEY).status_code == 200
    assert chat(client, USER_KEY).status_code == 200
    refused = chat(client, USER_KEY)
    assert "2 requests per minute" in assert_openai_error(refused, 429, "rate_limit_exceeded", "requests")
    assert refused.headers["Retry-After"] == "30"
    assert chat(client, OTHER_KEY).status_code == 200  # per key: team-b has its own bucket
    clock.now += 20.0
    assert chat(client, USER_KEY).headers["Retry-After"] == "10"
    clock.now += 10.0
    assert chat(client, USER_KEY).status_code == 200
    assert chat(client, USER_KEY).status_code == 429
    clock.now += 600.0  # idle for long: the bucket holds at most its capacity
    assert [chat(client, USER_KEY).status_code for _ in range(3)] == [200, 200, 429]


def test_admissions_carry_openais_rate_limit_headers():
    gateway = keyed_gateway(rate_per_min=2)
    clock = gateway._clock
    user = gateway.authenticate(f"Bearer {USER_KEY}")
    first = gateway.admit(user)
    assert first.headers == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
                             "x-ratelimit-reset-requests": "30.000s"}
    second = gateway.admit(user)
    assert second.headers["x-ratelimit-remaining-requests"] == "0" and second.headers["x-ratelimit-reset-requests"] == "60.000s"
    clock.now += 15.0
    with pytest.raises(GatewayError) as caught:
        gateway.admit(user)
    assert caught.value.headers["x-ratelimit-reset-requests"] == "45.000s" and caught.value.headers["Retry-After"] == "15"
    assert Gateway(GatewaySettings(), KeyStore([])).admit(Principal("anyone")).headers == {}  # no rate limit: no headers


def test_per_key_rate_overrides_default_and_burst_sets_capacity():
    gateway = Gateway(GatewaySettings(rate_per_min=60, burst=3), KeyStore([]), clock=FakeClock())
    anonymous = gateway.authenticate(None)
    for _ in range(3):
        gateway.admit(anonymous).release()
    with pytest.raises(GatewayError) as caught:
        gateway.admit(anonymous)
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0" and caught.value.headers["x-ratelimit-limit-requests"] == "60"
    slow = Principal("slow", rate_per_min=1)
    gateway.admit(slow).release()
    with pytest.raises(GatewayError) as caught:
        gateway.admit(slow)
    assert caught.value.headers["Retry-After"] == "60"


def test_concurrency_limit_with_two_requests_in_flight():
    gateway = keyed_gateway(max_concurrent=1, rate_per_min=3)
    app = make_app(gateway)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {USER_KEY}"}

    async def scenario() -> tuple:
        app.state.release = asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "wait": True}, headers=headers))
            while gateway.in_flight("team-a") == 0:
                await asyncio.sleep(0.001)
            second = await client.post("/v1/chat/completions", json=body, headers=headers)
            other = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"})
            app.state.release.set()
            first_done = await first
            third = await client.post("/v1/chat/completions", json=body, headers=headers)
            return first_done, second, other, third

    first, second, other, third = asyncio.run(scenario())
    assert first.json()["key_id"] == "team-a"
    message = assert_openai_error(second, 429, "concurrency_limit_exceeded", "requests")
    assert "limit is 1 at once" in message and second.headers["Retry-After"] == "1"
    assert other.status_code == 200  # another key is not held up
    assert third.status_code == 200  # the slot came back; the refused request spent no rate token
    assert gateway.in_flight("team-a") == 0


def test_admission_released_once_and_on_error():
    gateway = Gateway(GatewaySettings(max_concurrent=2), KeyStore([]))
    principal = gateway.authenticate(None)
    slot = gateway.admit(principal)
    slot.release()
    slot.release()
    assert gateway.in_flight("anonymous") == 0
    with pytest.raises(RuntimeError):
        with gateway.admit(principal):
            assert gateway.in_flight("anonymous") == 1
            raise RuntimeError("generation failed")
    assert gateway.in_flight("anonymous") == 0


def test_body_size_limit_from_content_length_and_from_a_chunked_body():
    gateway = Gateway(GatewaySettings(max_body_bytes=200), KeyStore([]))
    client = TestClient(make_app(gateway))
    assert chat(client, content="x" * 100).status_code == 200
    too_big = chat(client, content="x" * 300)
    assert "above this server's limit of 200 bytes" in assert_openai_error(too_big, 413, "request_too_large")

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 50
        yield b'"}]}'

    chunked = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in chunked.request.headers}
    assert "over this server's limit of 200 bytes" in assert_openai_error(chunked, 413, "request_too_large")


def test_prompt_length_limit_is_400_context_length_exceeded():
    gateway = Gateway(GatewaySettings(max_prompt_chars=10), KeyStore([]))
    client = TestClient(make_app(gateway))
    assert chat(client, content="0123456789").status_code == 200
    response = chat(client, content="01234567890")
    message = assert_openai_error(response, 400, "context_length_exceeded")
    assert response.json()["error"]["param"] == "messages"
    assert "11 characters, above this server's limit of 10" in message
    tokens = Gateway(GatewaySettings(max_prompt_tokens=4), KeyStore([]))
    tokens.check_prompt_length(tokens=4)
    with pytest.raises(GatewayError, match="5 tokens, above this server's limit of 4 tokens; shorten the prompt") as caught:
        tokens.check_prompt_length(tokens=5, param="prompt")
    assert caught.value.body()["error"]["param"] == "prompt"


def test_request_timeout_is_504_and_cancels_the_work():
    gateway = Gateway(GatewaySettings(request_timeout_s=0.05), KeyStore([]))
    cancelled = []

    async def slow() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "done"

    async def fast() -> str:
        return "done"

    assert asyncio.run(gateway.with_timeout(fast())) == "done"
    with pytest.raises(GatewayError) as caught:
        asyncio.run(gateway.with_timeout(slow()))
    assert caught.value.status == 504 and caught.value.code == "request_timeout" and cancelled == [True]
    assert caught.value.body()["error"]["type"] == "server_error"


def test_settings_are_strict():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GatewaySettings(rate_limit=3)
    with pytest.raises(ValueError, match="greater than 0"):
        GatewaySettings(max_body_bytes=0)
