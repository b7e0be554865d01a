"""Several adapters of one base behind one server: interleaved requests from the official `openai`
client (streaming and not) each get their own adapter's answer; adapters load and unload at run
time under the admin key; keys, 4xx errors and /metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.serve_helpers import lora_adapter, peft_reference, running_server
from tunekit.serve import Engine, create_app
from tunekit.serve.gateway import Gateway, GatewaySettings

USER, ADMIN = "user-secret", "admin-secret"
PROMPTS = ["ticket one: refund", "ticket two: late parcel", "ticket three: wrong size"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    adapters = {name: lora_adapter(tiny_model_dir, root / name, seed) for name, seed in (("triage", 1), ("orders", 2), ("late", 3))}
    expected = {name: [peft_reference(tiny_model_dir, path, p) for p in PROMPTS] for name, path in adapters.items()}
    expected[tiny_model_dir.name] = [peft_reference(tiny_model_dir, None, p) for p in PROMPTS]
    assert len({tuple(v) for v in expected.values()}) == 4  # every adapter really answers differently
    engine = Engine.from_paths([f"triage={adapters['triage']}", f"orders={adapters['orders']}"])
    gateway = Gateway.from_settings(GatewaySettings(), env={"TUNEKIT_API_KEYS": f"team:{USER}", "TUNEKIT_ADMIN_KEY": ADMIN})
    app = create_app(engine, max_new_tokens_limit=32, adapter_roots=[root], gateway=gateway)
    try:
        with running_server(engine, app=app) as url:
            yield url, root, adapters, expected, tiny_model_dir
    finally:
        engine.close()


def _ask(client, model, prompt, stream):
    args = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 8}
    if not stream:
        return client.chat.completions.create(**args).choices[0].message.content
    pieces = client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = list(pieces)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_interleaved_requests_get_their_own_adapter(setup):
    url, _, _, expected, model_dir = setup
    client = openai.OpenAI(base_url=url, api_key=USER, max_retries=0)
    listed = {m.id: m.parent for m in client.models.list().data}
    assert listed == {model_dir.name: None, "triage": model_dir.name, "orders": model_dir.name}
    jobs = [(model, i, stream) for stream in (False, True) for i in range(len(PROMPTS)) for model in ("triage", "orders", model_dir.name)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: _ask(client, job[0], PROMPTS[job[1]], job[2]), jobs))
    for (model, i, stream), answer in zip(jobs, answers):
        assert answer == expected[model][i], (model, i, stream)


def test_keys_guard_the_api_and_the_admin_routes(setup):
    url, root, adapters, _, _ = setup
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    body = {"lora_name": "late", "lora_path": "late"}
    as_user = httpx.post(f"{url}/load_lora_adapter", json=body, headers={"Authorization": f"Bearer {USER}"})
    assert as_user.status_code == 403 and set(as_user.json()["error"]) == {"message", "type", "param", "code"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for path, words in (("../late", "must not contain '..'"), ("/etc", "outside the configured adapter roots"), ("nope", "does not exist")):
        refused = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": path}, headers=admin)
        assert refused.status_code == 400 and words in refused.json()["error"]["message"], path
    (root / "escape").symlink_to("/etc")
    escaped = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": "escape"}, headers=admin)
    assert escaped.status_code == 400 and "outside" in escaped.json()["error"]["message"]

    # `tunekit chat` against a server with keys: --api-key / TUNEKIT_API_KEY, and one clear refusal without
    from tunekit.cli.serve import send_chat
    from tunekit.errors import TunekitError

    assert send_chat(PROMPTS[0], url=url, model="triage", max_tokens=8, api_key=USER) == _ask(openai.OpenAI(base_url=url, api_key=USER, max_retries=0), "triage", PROMPTS[0], False)
    with pytest.raises(TunekitError, match=r"refused the request \(401\)"):
        send_chat(PROMPTS[0], url=url, model="triage", max_tokens=8)


def test_hot_load_and_unload_while_requests_run(setup):
    url, root, adapters, expected, model_dir = setup
    client = openai.OpenAI(base_url=url, api_key=USER, max_retries=0)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    stop = threading.Event()
    background: list[tuple[int, str]] = []

    def keep_asking():
        while not stop.is_set():
            background.append((0, _ask(client, "triage", PROMPTS[0], False)))

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        loaded = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "late", "lora_path": "late"}, headers=admin, timeout=60)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["load_s"] < 2.0
        assert [_ask(client, "late", p, False) for p in PROMPTS] == expected["late"]
        # A corrupt adapter is a 400 with the reason; the others keep answering.
        broken = root / "broken"
        broken.mkdir()
        (broken / "adapter_config.json").write_text((adapters["late"] / "adapter_config.json").read_text())
        (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
        bad = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "broken", "lora_path": "broken"}, headers=admin)
        assert bad.status_code == 400 and "broken" in bad.json()["error"]["message"]
        gone = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "orders"}, headers=admin)
        assert gone.status_code == 200
        with pytest.raises(openai.NotFoundError):
            _ask(client, "orders", PROMPTS[0], False)
    finally:
        stop.set()
        worker.join()
    assert background and all(answer == expected["triage"][0] for _, answer in background)
    assert [m.id for m in client.models.list().data] == [model_dir.name, "triage", "late"]


def test_metrics_count_each_model(setup):
    url, _, _, _, _ = setup
    client = openai.OpenAI(base_url=url, api_key=USER, max_retries=0)
    before = _requests(url)
    for _ in range(3):
        _ask(client, "triage", PROMPTS[1], False)
    after = _requests(url)
    assert after[("triage", "200")] - before.get(("triage", "200"), 0) == 3


def _requests(url) -> dict:
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tunekit_requests":
            for sample in family.samples:
                if sample.name == "tunekit_requests_total":
                    counts[(sample.labels["model"], sample.labels["status"])] = sample.value
    return counts
