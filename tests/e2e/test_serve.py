"""`tunekit serve` end to end: a real uvicorn server on a free port, spoken to with the official
`openai` client, answers checked token for token against calling `generate` directly."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import httpx
import openai
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from tests.e2e.serve_helpers import LIMIT, free_port, running_server
from tunekit.cli.serve import chat_command, register, send_chat, serve_command, serve_settings
from tunekit.errors import ModelError, RunDirError, TunekitError
from tunekit.runs import write_jsonl
from tunekit.serve import Engine

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the engine puts the model
IMAGE_PART = {"type": "image_url", "image_url": {"url": "http://example.com/parcel.png"}}
CHAT = [
    {"role": "system", "content": "You sort support tickets."},
    {"role": "user", "content": "My parcel is late, order 1234."},
]


def greedy_reference(model, tokenizer, messages, max_new_tokens: int) -> tuple[str, int, int]:
    """(text, prompt tokens, generated tokens) from plain `model.generate`, greedy."""
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {key: value.to(model.device) for key, value in enc.items()}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), enc["input_ids"].shape[1], len(new)


@pytest.fixture(scope="module")
def tiny_engine(model_dir) -> Engine:
    return Engine.from_path(model_dir)


@pytest.fixture(scope="module")
def base_url(tiny_engine):
    with running_server(tiny_engine) as url:
        yield url


@pytest.fixture
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="tunekit", max_retries=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(DEVICE).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


# ---------------------------------------------------------------- a plain model directory


def test_models_list_and_health_name_the_directory(client, base_url, model_dir, tiny_engine):
    assert tiny_engine.model.device.type == DEVICE  # a GPU is used when there is one
    assert [m.id for m in client.models.list().data] == [model_dir.name]
    assert client.models.retrieve(model_dir.name).id == model_dir.name
    health = httpx.get(base_url.removesuffix("/v1") + "/health").json()
    assert health == {"status": "ok", "model": model_dir.name, "models": [model_dir.name], "queue_depth": 0}


def test_greedy_answer_and_usage_match_direct_generate(client, reference, model_dir):
    text, prompt_tokens, generated = greedy_reference(*reference, CHAT, max_new_tokens=12)
    response = client.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=0, max_tokens=12)
    assert response.choices[0].message.content == text
    assert response.choices[0].message.role == "assistant"
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    assert response.model == model_dir.name
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, generated)
    assert usage.total_tokens == prompt_tokens + generated
    assert prompt_tokens == len(reference[1].apply_chat_template(CHAT, add_generation_prompt=True, return_dict=False))
    # The whole conversation reaches the model: dropping the system message changes the answer.
    user_only, _, _ = greedy_reference(*reference, CHAT[1:], max_new_tokens=12)
    assert user_only != text
    response = client.chat.completions.create(model=model_dir.name, messages=CHAT[1:], temperature=0, max_tokens=12)
    assert response.choices[0].message.content == user_only


@pytest.mark.parametrize("budget_key", ["max_tokens", "max_completion_tokens"])
def test_token_budget_ends_with_length(client, model_dir, budget_key):
    response = client.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=0, **{budget_key: 3})
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_server_limit_is_the_default_budget(client, model_dir):
    response = client.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=0)
    assert (response.usage.completion_tokens, response.choices[0].finish_reason) == (LIMIT, "length")


def test_text_parts_are_joined_like_a_string(client, reference, model_dir):
    text, _, _ = greedy_reference(*reference, CHAT, max_new_tokens=8)
    text_parts = [{"type": "text", "text": "My parcel is late, "}, {"type": "text", "text": "order 1234."}]
    parts = [CHAT[0], {"role": "user", "content": text_parts}]
    response = client.chat.completions.create(model=model_dir.name, messages=parts, temperature=0, max_tokens=8)
    assert response.choices[0].message.content == text


def test_stop_string_cuts_the_answer(client, reference, model_dir):
    text, _, _ = greedy_reference(*reference, CHAT, max_new_tokens=16)
    third = len(text) // 3
    stop = text[third : third + 2]
    assert stop.strip(), f"reference answer too short to pick a stop string from: {text!r}"
    response = client.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=0, max_tokens=16, stop=[stop])
    assert response.choices[0].message.content == text[: text.find(stop)]
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 16  # generation itself ended at the stop string


def test_eos_ends_the_answer_with_stop(model_dir, reference):
    engine = Engine.from_path(model_dir)
    eos = engine.tokenizer.eos_token_id
    calls = []

    def eos_on_third_token(_module, _inputs, logits):
        calls.append(1)
        if len(calls) == 3:
            logits[..., eos] = 1e4
        return logits

    engine.model.lm_head.register_forward_hook(eos_on_third_token)
    two_tokens, prompt_tokens, _ = greedy_reference(*reference, CHAT, max_new_tokens=2)
    # eos counts as a generated token but is not part of the text.
    assert engine.chat(CHAT, max_tokens=10, temperature=0) == (two_tokens, prompt_tokens, 3, "stop")


def test_seeded_sampling_repeats(client, model_dir):
    def sample(seed: int) -> str:
        response = client.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=1.0, seed=seed, max_tokens=10)
        return response.choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)  # near-uniform logits of a random model: 10 equal draws are ~impossible


def test_real_openai_params_at_neutral_values_are_accepted(client, reference, model_dir):
    text, _, _ = greedy_reference(*reference, CHAT, max_new_tokens=6)
    response = client.chat.completions.create(
        model=model_dir.name,
        messages=[{"role": "developer", "content": CHAT[0]["content"]}, CHAT[1]],
        temperature=0,
        max_tokens=6,
        n=1,
        user="u-1",
        stream=False,
        presence_penalty=0,
        response_format={"type": "text"},
    )
    assert response.choices[0].message.content == text  # `developer` is the system role


@pytest.mark.parametrize(
    ("kwargs", "message", "param"),
    [
        ({"messages": []}, "messages", "messages"),
        ({"messages": [{"role": "tool", "content": "4", "tool_call_id": "t"}]}, "role 'tool' is not supported", "messages[0].role"),
        ({"temperature": 5}, "less than or equal to 2", "temperature"),
        ({"top_p": 0}, "greater than 0", "top_p"),
        ({"n": 9}, "less than or equal to 8", "n"),
        ({"stream_options": {"include_usage": True}}, "only allowed with stream=true", None),
        ({"max_tokens": LIMIT + 1}, f"limit of {LIMIT}", "max_tokens"),
        ({"max_tokens": 0}, "greater than or equal to 1", "max_tokens"),
        ({"presence_penalty": 0.5}, "presence_penalty", None),
        ({"messages": [{"role": "user", "content": [IMAGE_PART]}]}, "text only", "messages[0].content"),
        ({"extra_body": {"temprature": 0.5}}, "Unrecognized request argument supplied: temprature", "temprature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop sequences", "stop"),
    ],
)
def test_invalid_requests_are_400_in_openai_shape(client, model_dir, kwargs, message, param):
    request = {"model": model_dir.name, "messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)
    error = info.value.body
    assert message in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    assert "`gpt-4o` does not exist" in info.value.body["message"]
    assert info.value.body["code"] == "model_not_found"


def test_prompt_longer_than_context_is_400(client, model_dir):
    long_chat = [{"role": "user", "content": "ticket " * 2100}]  # > 2048 positions of the tiny model
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_dir.name, messages=long_chat, max_tokens=4)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in info.value.body["message"]


def test_malformed_http_bodies_get_openai_errors(base_url):
    bad_json = httpx.post(f"{base_url}/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    not_object = httpx.post(f"{base_url}/chat/completions", json=["hello"])
    missing = httpx.post(f"{base_url}/chat/completions", json={"messages": CHAT})
    no_route = httpx.get(f"{base_url}/embeddings")
    assert [r.status_code for r in (bad_json, not_object, missing, no_route)] == [400, 400, 400, 404]
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    assert "JSON object" in not_object.json()["error"]["message"]
    assert missing.json()["error"] == {
        "message": "'model' is a required property", "type": "invalid_request_error", "param": "model", "code": None
    }
    assert set(no_route.json()["error"]) == {"message", "type", "param", "code"}


def test_concurrent_requests_each_get_the_greedy_answer(base_url, reference, model_dir):
    text, _, _ = greedy_reference(*reference, CHAT, max_new_tokens=10)
    answers: list[str] = []

    def ask() -> None:
        c = openai.OpenAI(base_url=base_url, api_key="tunekit", max_retries=0)
        response = c.chat.completions.create(model=model_dir.name, messages=CHAT, temperature=0, max_tokens=10)
        answers.append(response.choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [text] * 4


# ---------------------------------------------------------------- `tunekit chat`


def test_chat_command_prints_the_answer(base_url, reference, capsys):
    text, _, _ = greedy_reference(*reference, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], 5)
    chat_command("Hi", url=base_url, model=None, system="Be brief.", max_tokens=5, temperature=0.0)
    assert capsys.readouterr().out == text + "\n"
    # The server root works as --url too: /v1 is added.
    assert send_chat("Hi", url=base_url.removesuffix("/v1"), system="Be brief.", max_tokens=5) == text


def test_chat_reports_server_refusals_in_one_line(base_url):
    with pytest.raises(TunekitError, match="`nope` does not exist"):
        send_chat("Hi", url=base_url, model="nope", max_tokens=2)


def test_chat_without_server_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(TunekitError) as info:
        send_chat("Hi", url=url)
    assert info.value.message == f"cannot reach a server at {url}"
    assert "tunekit serve" in info.value.hint


# ---------------------------------------------------------------- a run directory


def _make_run(root: Path, model_dir: Path, name: str = "support-bot") -> Path:
    """A run dir as training leaves it: resolved recipe + a (randomly initialised) LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = root / name
    write_jsonl(root / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}])
    recipe = {
        "name": name,
        "base_model": str(model_dir),
        "data": {"train": str(root / "train.jsonl")},
        "serve": {"port": 9123, "max_new_tokens": 32},
    }
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir) -> Path:
    return _make_run(tmp_path_factory.mktemp("runs"), model_dir)


def test_run_dir_serves_base_plus_adapter(run_dir, reference, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = Engine.from_path(run_dir)
    assert engine.name == model_dir.name and list(engine.models) == [model_dir.name, "support-bot"]
    assert engine.source == f"{model_dir} + adapter {run_dir / 'adapter'}"
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter").to(DEVICE).eval()
    tuned_text, prompt_tokens, generated = greedy_reference(tuned, reference[1], CHAT, max_new_tokens=12)
    base_text, _, _ = greedy_reference(*reference, CHAT, max_new_tokens=12)
    assert tuned_text != base_text  # the adapter really changes the answers

    with running_server(engine) as url:
        c = openai.OpenAI(base_url=url, api_key="tunekit", max_retries=0)
        listed = c.models.list().data
        assert [(m.id, m.parent, m.root) for m in listed] == [
            (model_dir.name, None, str(model_dir)), ("support-bot", model_dir.name, str(run_dir / "adapter"))
        ]
        response = c.chat.completions.create(model="support-bot", messages=CHAT, temperature=0, max_tokens=12)
        assert response.choices[0].message.content == tuned_text
        assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, generated)
        assert send_chat(CHAT[1]["content"], url=url, system=CHAT[0]["content"], max_tokens=12) == tuned_text


def test_run_dir_serves_its_adapter_and_the_merged_export_by_path(tmp_path, model_dir, reference):
    """A run is served as what it trained (the adapter, on a shared base: many runs fit one server),
    whatever else it exported; the merged export is served by naming its directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = _make_run(tmp_path, model_dir, name="merged-run")
    # Stand-in for a merged export: the base weights, so its answers differ from base + adapter.
    merged = run / "export" / "merged"
    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(merged)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(merged)
    engine = Engine.from_path(run)
    assert list(engine.models) == [model_dir.name, "merged-run"] and engine.models["merged-run"].root == str(run / "adapter")
    engine.close()
    engine = Engine.from_path(merged)
    assert list(engine.models) == ["merged"] and engine.source == str(merged)
    text, prompt_tokens, generated = greedy_reference(*reference, CHAT, max_new_tokens=8)
    finish = "length" if generated == 8 else "stop"
    assert engine.chat(CHAT, max_tokens=8, temperature=0) == (text, prompt_tokens, generated, finish)


def test_run_dir_of_a_full_fine_tune_serves_its_model(tmp_path, model_dir, reference):
    """A full fine-tune writes model/ and no adapter/: that model is what is served."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = _make_run(tmp_path, model_dir, name="full-run")
    shutil.rmtree(run / "adapter")
    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run / "model")
    engine = Engine.from_path(run)
    assert engine.name == "full-run" and engine.source == str(run / "model")
    text, prompt_tokens, generated = greedy_reference(*reference, CHAT, max_new_tokens=8)
    finish = "length" if generated == 8 else "stop"
    assert engine.chat(CHAT, max_tokens=8, temperature=0) == (text, prompt_tokens, generated, finish)


def test_recipe_file_serves_its_run(tmp_path, model_dir):
    run = _make_run(tmp_path / "runs", model_dir, name="from-recipe")
    recipe = tmp_path / "from-recipe.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(model_dir), "output_dir": "runs", "data": {"train": "runs/train.jsonl"}}))
    assert run == (tmp_path / "runs" / "from-recipe")
    assert list(Engine.from_path(recipe).models) == [model_dir.name, "from-recipe"]


def test_unservable_paths_fail_clearly(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a run, adapter nor model directory"):
        Engine.from_path(tmp_path / "empty")
    # `runs/` exists here, so `runs/nope` is a mistyped run, not a hub id to look up.
    (tmp_path / "runs").mkdir()
    for missing in ("runs/nope", str(tmp_path / "gone"), "runs/nope/export/merged"):
        with pytest.raises(ModelError, match=f"cannot serve '{missing}': no such run directory, model directory or file") as info:
            Engine.from_path(missing)
        assert "recipe.yaml + adapter/" in info.value.hint
    with pytest.raises(ModelError, match="cannot serve 'someorg/some-model': .* loading it as a hub id failed"):
        Engine.from_path("someorg/some-model")  # the hub is offline in tests
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "recipe.yaml").write_text(yaml.safe_dump({"base_model": str(model_dir), "data": {"train": "gone.jsonl"}}))
    with pytest.raises(RunDirError, match="adapter") as info:
        Engine.from_path(untrained)
    assert "tunekit train" in info.value.hint


# ---------------------------------------------------------------- the commands


def _address(settings) -> dict:
    return settings.model_dump(include={"host", "port", "max_new_tokens"})


def test_serve_settings_come_from_flags_then_recipe_then_defaults(run_dir, model_dir):
    assert _address(serve_settings(run_dir, None, None, None)) == {"host": "127.0.0.1", "port": 9123, "max_new_tokens": 32}
    assert _address(serve_settings(run_dir, "0.0.0.0", 8080, None)) == {"host": "0.0.0.0", "port": 8080, "max_new_tokens": 32}
    assert _address(serve_settings(model_dir, None, None, 100)) == {"host": "127.0.0.1", "port": 8000, "max_new_tokens": 100}


def test_serve_refuses_a_busy_port_before_loading(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TunekitError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_command([str(tmp_path / "not-loaded")], host="127.0.0.1", port=port, max_new_tokens=None)


def test_commands_have_help():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    serve_help = runner.invoke(app, ["serve", "--help"])
    chat_help = runner.invoke(app, ["chat", "--help"])
    assert serve_help.exit_code == 0 and "--max-new-tokens" in serve_help.output and "--port" in serve_help.output
    assert chat_help.exit_code == 0 and "--url" in chat_help.output and "--system" in chat_help.output


# ---------------------------------------------------------------- the embedded default model


@pytest.mark.slow
def test_embedded_alias_answers_through_the_api(embedded_model_dir):
    engine = Engine.from_path("smollm2-135m-instruct")
    assert engine.name == "smollm2-135m-instruct"
    with running_server(engine) as url:
        c = openai.OpenAI(base_url=url, api_key="tunekit", max_retries=0)
        response = c.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=48,
        )
    answer = response.choices[0].message.content
    assert "Paris" in answer
    # A real chat model ends its turn with eos, which is not part of the text.
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens < 48
    assert "<|im_end|>" not in answer
