"""`tunekit serve NAME@production` follows the registry: promote and rollback change what the served
model answers with, without a restart and without a failed request; the response says which
version answered; a deleted run directory is still served from the registry's copy; altered
stored files are refused."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import openai
import pytest
import yaml

from tests.e2e.serve_helpers import lora_adapter, peft_reference, running_server
from tests.unit.registry_helpers import fake_run
from tunekit import registry
from tunekit.errors import ModelError
from tunekit.serve import Engine, create_app
from tunekit.serve.follow import AliasFollower

PROMPT = "ticket: my parcel is late"


def _real_run(root, name, model_dir, seed):
    """A registered-run layout (recipe, manifest, eval report) around a real adapter of the tiny model."""
    run = fake_run(root, name)
    shutil.rmtree(run / "adapter")
    lora_adapter(model_dir, run / "adapter", seed)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["base_model"] = str(model_dir)
    recipe["data"] = {"train": "data/train.jsonl"}  # a resolved recipe names its data (serving does not read it)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


@pytest.fixture
def registered(tmp_path, tiny_model_dir):
    runs = {seed: _real_run(tmp_path / "runs", f"triage-{seed}", tiny_model_dir, seed) for seed in (1, 2)}
    for seed in (1, 2):
        registry.register(runs[seed], name="triage")
    registry.promote("triage@1", "production", force=True, reason="first release")
    expected = {v: peft_reference(tiny_model_dir, runs[seed] / "adapter", PROMPT) for v, seed in ((1, 1), (2, 2))}
    assert expected[1] != expected[2]
    for run in runs.values():  # the registry's copy is what gets served
        shutil.rmtree(run)
    return expected


def _ask(client):
    response = client.chat.completions.with_raw_response.create(
        model="triage@production", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=8
    )
    return response.parse().choices[0].message.content, response.headers.get("x-tunekit-model-version")


def test_the_served_alias_follows_promote_and_rollback_without_a_failed_request(registered):
    engine = Engine.from_paths(["triage@production"])
    follower = AliasFollower(engine, {"triage@production": "triage@production"}, interval_s=0.2).start()
    app = create_app(engine, max_new_tokens_limit=16)
    answers, failures, stop = [], [], threading.Event()
    try:
        with running_server(engine, app=app) as url:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            assert [m.id for m in client.models.list().data if m.parent] == ["triage@production"]
            assert _ask(client) == (registered[1], "1")

            def keep_asking():
                while not stop.is_set():
                    try:
                        answers.append(_ask(client))
                    except Exception as exc:  # noqa: BLE001  (any failed request fails the test below)
                        failures.append(repr(exc))

            sender = threading.Thread(target=keep_asking)
            sender.start()
            # A worse version forced through, then the one-command rollback, while a client keeps asking.
            registry.promote("triage@2", "production", force=True, reason="try v2")
            switched = _wait_for(client, (registered[2], "2"))
            started = time.perf_counter()
            registry.rollback("triage", "production")
            back = _wait_for(client, (registered[1], "1"))
            rollback_s = time.perf_counter() - started
            stop.set()
            sender.join()
    finally:
        follower.stop()
        engine.close()
    assert switched and back and not failures
    # Every answer came from one version and says which: never a mix.
    assert set(answers) <= {(registered[1], "1"), (registered[2], "2")} and (registered[2], "2") in answers
    assert rollback_s < 5
    assert [(s.from_version, s.to_version, s.ok) for s in follower.switches] == [(1, 2, True), (2, 1, True)]
    changes = [(c.from_version, c.to_version) for c in registry.history("triage")]
    assert changes[-2:] == [(1, 2), (2, 1)]


def _wait_for(client, wanted, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ask(client) == wanted:
            return True
        time.sleep(0.05)
    return False


def test_altered_stored_files_are_refused(registered):
    record = registry.resolve("triage@1")
    weights = record.artifact_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="fails its digest check"):
        Engine.from_paths(["triage@production"])
    # The follower refuses to switch to an altered version and keeps the one it serves.
    engine = Engine.from_paths(["triage@2"])
    try:
        registry.promote("triage@2", "canary", force=True, reason="canary")
        follower = AliasFollower(engine, {"triage@2": "triage@canary"})
        follower.start()
        follower.stop()
        registry.promote("triage@1", "canary", force=True, reason="altered one")
        switch = follower.check("triage@2", "triage@canary")
        assert switch is not None and not switch.ok and "fails its digest check" in switch.reason
        assert engine.served("triage@2").version == 2
    finally:
        engine.close()


def test_health_request_log_and_headers_say_the_version_and_the_rate_limit(registered, tmp_path):
    from tunekit.serve.gateway import Gateway, GatewaySettings
    from tunekit.serve.requestlog import RequestLog

    engine = Engine.from_paths(["triage@production"])
    log = RequestLog(tmp_path / "requests.db")
    app = create_app(engine, max_new_tokens_limit=8, request_log=log, gateway=Gateway(GatewaySettings(rate_per_min=120)))
    try:
        with running_server(engine, app=app) as url:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            _ask(client)
            body = {"model": "triage@production", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2, "stream": True}
            with httpx.stream("POST", f"{url}/chat/completions", json=body) as streamed:
                headers = streamed.headers
                streamed.read()
            health = httpx.get(url.removesuffix("/v1") + "/health").json()
    finally:
        engine.close()
    assert health["versions"] == {"triage@production": 1}
    assert headers["x-tunekit-model-version"] == "1"
    assert headers["x-ratelimit-limit-requests"] == "120" and headers["x-ratelimit-remaining-requests"] == "118"
    log.flush()
    rows = log.rows()
    assert [(r["model"], r["version"]) for r in rows] == [("triage@production", "1")] * 2
