"""The proxy path of `--backend vllm`: tunekit's gateway in front of an OpenAI-compatible upstream.
The upstream is a second real tunekit server (hf backend) on loopback, as `vllm serve` would be;
vLLM itself needs CUDA and is not run here (only its absence is)."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack, contextmanager

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.serve_helpers import running_server
from tunekit.config import ServeConfig
from tunekit.errors import TunekitError
from tunekit.serve import Engine, create_app
from tunekit.serve.backends import open_engine
from tunekit.serve.backends.proxy import vllm_arguments
from tunekit.serve.gateway import Gateway, GatewaySettings
from tunekit.serve.metrics import ServeMetrics
from tunekit.serve.requestlog import RequestLog
from tunekit.serve.sources import Source

USER = "user-secret"
UPSTREAM_LIMIT, PROXY_LIMIT = 64, 128  # max_tokens caps: the proxy lets through what the upstream refuses
CHAT = [{"role": "system", "content": "You sort support tickets."}, {"role": "user", "content": "My parcel is late, order 1234."}]


@pytest.fixture(scope="module")
def upstream(model_dir):
    engine = Engine.from_path(model_dir)
    try:
        with running_server(engine, limit=UPSTREAM_LIMIT) as url:
            yield url, model_dir.name
    finally:
        engine.close()


@contextmanager
def proxy_server(upstream_url: str, log_path):
    settings = ServeConfig(backend="vllm", upstream_url=upstream_url)
    engine = open_engine(settings, [])
    gateway = Gateway.from_settings(GatewaySettings(), env={"TUNEKIT_API_KEYS": f"team:{USER}"})
    log = RequestLog(log_path)
    metrics = ServeMetrics()
    app = create_app(engine, max_new_tokens_limit=PROXY_LIMIT, gateway=gateway, request_log=log, metrics=metrics)
    try:
        with running_server(engine, app=app) as url:
            yield url, log
    finally:
        log.close()
        engine.close()


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    with proxy_server(upstream[0], tmp_path_factory.mktemp("log") / "requests.sqlite") as (url, log):
        yield url, log


def _clients(upstream, proxy):
    direct = openai.OpenAI(base_url=upstream[0], api_key="none", max_retries=0)
    proxied = openai.OpenAI(base_url=proxy[0], api_key=USER, max_retries=0)
    return direct, proxied


def test_models_are_the_upstreams(upstream, proxy):
    direct, proxied = _clients(upstream, proxy)
    assert [m.id for m in proxied.models.list().data] == [m.id for m in direct.models.list().data] == [upstream[1]]


def test_answers_equal_asking_the_upstream_directly(upstream, proxy):
    direct, proxied = _clients(upstream, proxy)
    args = {"model": upstream[1], "messages": CHAT, "temperature": 0, "max_tokens": 12}
    want, got = direct.chat.completions.create(**args), proxied.chat.completions.create(**args)
    assert got.choices[0].message.content == want.choices[0].message.content and want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage == want.usage
    stopped = {"stop": [want.choices[0].message.content[4:7]], "max_tokens": 12}
    assert (proxied.chat.completions.create(**{**args, **stopped}).choices[0].message.content
            == direct.chat.completions.create(**{**args, **stopped}).choices[0].message.content)
    text = {"model": upstream[1], "prompt": "Order 1234 is", "max_tokens": 6, "temperature": 0}
    assert proxied.completions.create(**text).choices[0].text == direct.completions.create(**text).choices[0].text
    sampled = {**args, "temperature": 1.0, "seed": 5, "n": 2}
    assert ([c.message.content for c in proxied.chat.completions.create(**sampled).choices]
            == [c.message.content for c in direct.chat.completions.create(**sampled).choices])


def test_streaming_pieces_and_usage_equal_the_upstreams(upstream, proxy):
    direct, proxied = _clients(upstream, proxy)
    args = {"model": upstream[1], "messages": CHAT, "temperature": 0, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    want, got = list(direct.chat.completions.create(**args)), list(proxied.chat.completions.create(**args))

    def pieces(chunks):
        return [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices]

    assert pieces(got) == pieces(want) and len(pieces(got)) > 3
    assert got[-1].usage == want[-1].usage and got[-1].choices == []


def test_keys_are_enforced_by_the_proxy(upstream, proxy):
    for key in ("wrong-key", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(f"{proxy[0]}/chat/completions", headers=headers,
                              json={"model": upstream[1], "messages": CHAT, "max_tokens": 4})
        assert response.status_code == 401 and set(response.json()["error"]) == {"message", "type", "param", "code"}


def _token_counters(proxy_url: str, model: str) -> tuple[float, float]:
    text = httpx.get(proxy_url.removesuffix("/v1") + "/metrics").text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("model") == model}
    return values.get("tunekit_prompt_tokens_total", 0.0), values.get("tunekit_completion_tokens_total", 0.0)


def _rows_after(log, before: int, count: int) -> list[dict]:
    deadline = time.monotonic() + 10  # a stream's row is written as its response closes, just after the client's last chunk
    while True:
        log.flush()
        rows = log.rows()[before:]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_request_log_and_metrics_carry_the_upstreams_token_counts(upstream, proxy):
    direct, proxied = _clients(upstream, proxy)
    url, log = proxy
    args = {"model": upstream[1], "messages": CHAT, "temperature": 0, "max_tokens": 9}
    want = direct.chat.completions.create(**args).usage
    log.flush()
    before, tokens_before = len(log.rows()), _token_counters(url, upstream[1])
    proxied.chat.completions.create(**args)
    list(proxied.chat.completions.create(**args, stream=True))  # a stream without include_usage is counted the same
    rows = _rows_after(log, before, 2)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["status"], r["key_id"], r["stream"]) for r in rows] == [
        (want.prompt_tokens, want.completion_tokens, 200, "team", False),
        (want.prompt_tokens, want.completion_tokens, 200, "team", True),
    ]
    tokens_after = _token_counters(url, upstream[1])
    assert tokens_after[0] - tokens_before[0] == 2 * want.prompt_tokens
    assert tokens_after[1] - tokens_before[1] == 2 * want.completion_tokens


def test_upstream_refusals_keep_their_status_and_reason(upstream, proxy):
    _, proxied = _clients(upstream, proxy)
    with pytest.raises(openai.BadRequestError) as refused:
        proxied.chat.completions.create(model=upstream[1], messages=CHAT, max_tokens=UPSTREAM_LIMIT + 1)
    message = refused.value.body["message"]
    assert message.startswith("the upstream server answered 400") and f"above this server's limit of {UPSTREAM_LIMIT}" in message
    rows = _rows_after(proxy[1], len(proxy[1].rows()) - 1, 1)
    assert rows[-1]["status"] == 400


def test_upstream_down_is_502_in_openai_shape(model_dir, tmp_path):
    engine = Engine.from_path(model_dir)
    with ExitStack() as upstream_stack:
        upstream_url = upstream_stack.enter_context(running_server(engine, limit=16))
        with proxy_server(upstream_url, tmp_path / "log.sqlite") as (url, log):
            proxied = openai.OpenAI(base_url=url, api_key=USER, max_retries=0)
            assert proxied.chat.completions.create(model=model_dir.name, messages=CHAT, max_tokens=2).choices
            upstream_stack.close()  # the upstream goes away; the proxy keeps running
            engine.close()
            for stream in (False, True):
                response = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {USER}"},
                                      json={"model": model_dir.name, "messages": CHAT, "max_tokens": 2, "stream": stream})
                assert response.status_code == 502
                error = response.json()["error"]
                assert error["type"] == "server_error" and "cannot be reached" in error["message"]
            rows = _rows_after(log, 1, 2)
            assert [r["status"] for r in rows] == [502, 502]


def test_vllm_backend_without_vllm_names_the_extra():
    with pytest.raises(TunekitError) as missing:
        open_engine(ServeConfig(backend="vllm"), ["smollm2-135m-instruct"])
    assert "vLLM" in missing.value.message and "tunekit[vllm]" in missing.value.hint


def test_vllm_arguments_serve_the_base_and_its_adapters(tmp_path):
    adapters = []
    for name, rank in (("triage", 8), ("orders", 24)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "base"}))
        adapters.append(Source(name, "adapter", str(tmp_path / name), "base"))
    args = vllm_arguments("/models/base", "base", adapters, 8123, ["--max-model-len", "2048"])
    assert args == [
        "serve", "/models/base", "--host", "127.0.0.1", "--port", "8123", "--served-model-name", "base",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
        "--lora-modules", f"triage={tmp_path / 'triage'}", f"orders={tmp_path / 'orders'}", "--max-model-len", "2048",
    ]
    assert vllm_arguments("/models/base", "base", [], 1, []) == [
        "serve", "/models/base", "--host", "127.0.0.1", "--port", "1", "--served-model-name", "base"
    ]
