"""`tunekit serve --backend llamacpp` end to end: the tiny model converted to GGUF, served by the real
app under uvicorn, spoken to with the official `openai` client; answers checked against tunekit's
own llama.cpp helpers (`chat_greedy`), which the export's parity check trusts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.serve_helpers import peft_reference, running_server
from tunekit.cli.serve import serve_settings
from tunekit.errors import ModelError, TunekitError
from tunekit.export.gguf import convert_to_gguf
from tunekit.export.llamacpp import chat_greedy, open_gguf, prompt_token_ids, render_prompt
from tunekit.serve import create_app
from tunekit.serve.backends import open_engine
from tunekit.serve.backends.gguf_files import resolve_gguf, run_gguf
from tunekit.serve.backends.llamacpp import LlamaCppEngine

PROMPTS = ["My parcel is late, order 1234.", "Refund for a broken mug please.", "What is two plus two?"]


def _chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def gguf_file(model_dir, tmp_path_factory) -> Path:
    return convert_to_gguf(model_dir, tmp_path_factory.mktemp("gguf") / "tiny-chat-F16.gguf", "F16")


@pytest.fixture(scope="module")
def expected(gguf_file) -> dict:
    """chat_greedy's answers (text, finish) and prompt token counts, from a separate llama.cpp context."""
    with open_gguf(gguf_file) as llm:
        return {
            p: (*chat_greedy(llm, _chat(p), 16), len(prompt_token_ids(llm, render_prompt(llm, _chat(p))))) for p in PROMPTS
        }


@pytest.fixture(scope="module")
def engine(gguf_file):
    engine = LlamaCppEngine.from_paths([f"tiny={gguf_file}"])
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    with running_server(engine, limit=64) as url:
        yield openai.OpenAI(base_url=url, api_key="tunekit", max_retries=0)


def _ask(client, prompt: str, **extra):
    return client.chat.completions.create(model="tiny", messages=_chat(prompt), temperature=0, **{"max_tokens": 16, **extra})


def test_greedy_answers_equal_chat_greedy(client, expected):
    answers = set()
    for prompt in PROMPTS:
        text, finish, prompt_tokens = expected[prompt]
        response = _ask(client, prompt)
        choice = response.choices[0]
        assert (choice.message.content, choice.finish_reason) == (text, finish)
        assert response.usage.prompt_tokens == prompt_tokens
        assert 1 <= response.usage.completion_tokens <= 16
        answers.add(text)
    assert len(answers) > 1  # the prompts really steer the model: a wrong prompt would show


def test_concurrent_requests_decode_in_one_batch_with_the_same_answers(client, expected, engine):
    """Continuous batching: requests sent together decode together, and each greedy answer is still
    the one chat_greedy gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = PROMPTS * 3
    engine.peak_batch = 0
    with ThreadPoolExecutor(len(prompts)) as pool:
        responses = list(pool.map(lambda p: _ask(client, p), prompts))
    for prompt, response in zip(prompts, responses):
        assert (response.choices[0].message.content, response.choices[0].finish_reason) == expected[prompt][:2], prompt
    assert engine.peak_batch > 1


def test_models_list_and_health(client, gguf_file):
    listed = client.models.list().data
    assert [(m.id, m.root) for m in listed] == [("tiny", str(gguf_file))]
    health = httpx.get(str(client.base_url).removesuffix("/v1/") + "/health").json()
    assert health["models"] == ["tiny"] and health["queue_depth"] == 0


def test_stream_gives_the_same_text_and_usage(client, expected):
    prompt = PROMPTS[0]
    chunks = list(_ask(client, prompt, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) >= 2  # really streamed, piece by piece
    assert "".join(pieces) == expected[prompt][0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected[prompt][1]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == expected[prompt][2]
    plain = _ask(client, prompt)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stop_string_cuts_the_answer(client, expected):
    text = expected[PROMPTS[1]][0]
    assert len(text) >= 6, text
    stop = text[3:6]
    cut = text[: text.find(stop)]
    response = _ask(client, PROMPTS[1], stop=[stop])
    assert response.choices[0].message.content == cut and response.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, PROMPTS[1], stop=[stop], stream=True) if c.choices)
    assert streamed == cut


def test_max_tokens_ends_with_length(client):
    response = _ask(client, PROMPTS[2], max_tokens=3)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 3


def test_seed_repeats_a_sampled_answer(client):
    def sample(seed):
        return client.chat.completions.create(
            model="tiny", messages=_chat(PROMPTS[0]), temperature=1.0, max_tokens=12, seed=seed
        ).choices[0].message.content

    # The backend reuses the cells of the last prompt's start, and how much of a prompt was reused
    # changes its logits in the last bits (other batch shapes). The tiny random model's next-token
    # distribution is nearly flat, so at temperature 1 those bits can move a sampled token: the seed
    # repeats an answer computed the same way (as OpenAI's, it is best effort across cache states).
    sample(6)  # from here on every call reuses all of this prompt but its last token
    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1


def test_text_completion_and_n(client):
    response = client.completions.create(model="tiny", prompt="Order 1234 is", max_tokens=5, temperature=0)
    assert response.choices[0].finish_reason in ("length", "stop") and response.usage.completion_tokens >= 1
    several = client.chat.completions.create(model="tiny", messages=_chat(PROMPTS[0]), temperature=1.0, max_tokens=6, n=2, seed=3)
    assert [c.index for c in several.choices] == [0, 1]


def test_bad_requests_are_4xx_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=_chat("hi"), max_tokens=4)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        _ask(client, "hi", max_tokens=1000)
    assert too_many.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
    assert role.value.status_code == 400 and role.value.body["type"] == "invalid_request_error"


# ---------------------------------------------------------------- which file is served


def _fake_run(root: Path, gguf_file: Path, types: list[str], blocked: list[str]) -> Path:
    """A run directory as `tunekit export` leaves it: recipe, export/<run>-<TYPE>.gguf, quant_report.json."""
    run = root / "runs" / "exp"
    (run / "export").mkdir(parents=True)
    (run / "recipe.yaml").write_text(f"name: exp\nbase_model: {gguf_file.parent}\noutput_dir: {root / 'runs'}\ndata:\n  train: t.jsonl\n")
    for index, type_name in enumerate(types):
        target = run / "export" / f"exp-{type_name}.gguf"
        shutil.copy(gguf_file, target)
        with target.open("ab") as handle:  # sizes as real quantizations: F16 biggest
            handle.write(b"\0" * (len(types) - index) * 1000)
    report = {"blocked": blocked, "quantized": [{"type": t, "blocked": t in blocked} for t in types[1:]]}
    (run / "export" / "quant_report.json").write_text(json.dumps(report))
    return run


def test_run_serves_the_smallest_file_that_passed_the_gate(gguf_file, tmp_path):
    run = _fake_run(tmp_path, gguf_file, ["F16", "Q8_0", "Q4_K_M"], blocked=["Q4_K_M"])
    assert run_gguf(run, None).name == "exp-Q8_0.gguf"
    assert run_gguf(run, "f16").name == "exp-F16.gguf"
    assert resolve_gguf(str(run)).path.name == "exp-Q8_0.gguf" and resolve_gguf(str(run)).name == "exp"
    with pytest.raises(ModelError, match="no Q5_K_M file"):
        run_gguf(run, "Q5_K_M")
    with pytest.raises(ModelError, match="no GGUF export"):
        run_gguf(_fake_run(tmp_path / "empty", gguf_file, [], []), None)


def test_backend_setting_is_validated(tmp_path, gguf_file, model_dir):
    assert serve_settings(gguf_file, None, None, None, backend="llamacpp").backend == "llamacpp"
    with pytest.raises(TunekitError, match="--backend tgi"):
        serve_settings(gguf_file, None, None, None, backend="tgi")
    serving = tmp_path / "serving.yaml"
    serving.write_text("backend: hf\ngguf: Q8_0\n")
    with pytest.raises(TunekitError, match="gguf: only used by backend llamacpp"):
        serve_settings(serving, None, None, None)
    adapter = resolve_gguf(f"mine={_peft_adapter(model_dir, tmp_path / 'adapter')}")
    assert (adapter.name, adapter.kind, adapter.path) == ("mine", "adapter", tmp_path / "adapter")  # a LoRA on the base
    with pytest.raises(ModelError, match="not a .gguf file or an exported run"):
        resolve_gguf(str(tmp_path))


def _peft_adapter(model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(out)
    return out


def test_open_engine_picks_the_backend(gguf_file):
    settings = serve_settings(gguf_file, None, None, None, backend="llamacpp")
    engine = open_engine(settings, [str(gguf_file)])
    try:
        assert isinstance(engine, LlamaCppEngine) and list(engine.models) == [gguf_file.stem]
        with running_server(engine, app=create_app(engine, max_new_tokens_limit=8)) as url:
            response = openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
                model=gguf_file.stem, messages=_chat(PROMPTS[2]), temperature=0
            )
            assert response.usage.completion_tokens <= 8
    finally:
        engine.close()


@pytest.mark.slow
def test_embedded_model_gguf_answers_like_chat_greedy():
    """The embedded SmolLM2 GGUF, served as it ships (what bench/serve_throughput.py --backend llamacpp measures)."""
    from tunekit.models.loading import _embedded_gguf

    engine = LlamaCppEngine.from_paths(["smollm2-135m-instruct"])
    messages = _chat("What is the capital of France?")
    try:
        with open_gguf(_embedded_gguf("smollm2-135m-instruct")) as llm:
            text, finish = chat_greedy(llm, messages, 24)
        with running_server(engine, limit=24) as url:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            response = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=24)
        assert (response.choices[0].message.content, response.choices[0].finish_reason) == (text, finish)
        assert len(text) > 10 and "\ufffd" not in text  # a real answer, decoded whole
    finally:
        engine.close()


# ---------------------------------------------------------------- LoRA adapters on one base GGUF


def _lora(model_dir: Path, out: Path, seed: int, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj")) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=list(modules), init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_setup(model_dir, gguf_file, tmp_path_factory):
    from tunekit.serve.gateway import Gateway, GatewaySettings

    root = tmp_path_factory.mktemp("loras")
    adapters = {name: _lora(model_dir, root / name, seed) for name, seed in (("triage", 1), ("orders", 2), ("late", 3))}
    expected = {name: [peft_reference(model_dir, path, p) for p in PROMPTS] for name, path in adapters.items()}
    expected["tiny"] = [peft_reference(model_dir, None, p) for p in PROMPTS]
    assert len({tuple(v) for v in expected.values()}) == 4  # each adapter really changes the answers
    engine = LlamaCppEngine.from_paths([f"tiny={gguf_file}", f"triage={adapters['triage']}", f"orders={adapters['orders']}"])
    gateway = Gateway.from_settings(GatewaySettings(), env={"TUNEKIT_API_KEYS": "team:user-key", "TUNEKIT_ADMIN_KEY": "admin-key"})
    try:
        with running_server(engine, app=create_app(engine, max_new_tokens_limit=16, adapter_roots=[root], gateway=gateway)) as url:
            yield url, expected, engine
    finally:
        engine.close()


def _greedy(client, model: str, prompt: str, stream: bool = False) -> str:
    args = {"model": model, "messages": _chat(prompt), "temperature": 0, "max_tokens": 8}
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True) if c.choices)
    return client.chat.completions.create(**args).choices[0].message.content


def test_lora_adapters_answer_like_peft_interleaved(lora_setup):
    """PEFT adapters converted to GGUF LoRA files, switched per request on one llama.cpp context:
    every answer is the PEFT model's greedy answer, in any order, streamed or not."""
    url, expected, _ = lora_setup
    client = openai.OpenAI(base_url=url, api_key="user-key", max_retries=0)
    listed = {m.id: m.parent for m in client.models.list().data}
    assert listed == {"tiny": None, "triage": "tiny", "orders": "tiny"}
    order = [("triage", 0), ("tiny", 0), ("orders", 1), ("triage", 1), ("orders", 0), ("tiny", 2), ("triage", 2), ("orders", 2)]
    for i, (model, p) in enumerate(order):
        assert _greedy(client, model, PROMPTS[p], stream=i % 2 == 1) == expected[model][p], (model, p)


def test_concurrent_requests_to_several_loras_each_get_their_own(lora_setup):
    """Requests for different LoRAs sent at once: llama.cpp sets a LoRA per context, so each batch is one
    LoRA's and the others wait their turn; every answer is its own adapter's."""
    from concurrent.futures import ThreadPoolExecutor

    url, expected, engine = lora_setup
    client = openai.OpenAI(base_url=url, api_key="user-key", max_retries=0)
    jobs = [(model, p) for p in range(3) for model in ("triage", "orders", "tiny")] * 2
    engine.peak_batch = 0
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _greedy(client, job[0], PROMPTS[job[1]], stream=job[1] == 1), jobs))
    assert answers == [expected[model][p] for model, p in jobs]
    assert engine.peak_batch > 1


def test_lora_loads_and_unloads_at_run_time(lora_setup):
    url, expected, engine = lora_setup
    admin = httpx.Client(base_url=url, headers={"Authorization": "Bearer admin-key"}, timeout=60)
    loaded = admin.post("/load_lora_adapter", json={"lora_name": "late", "lora_path": "late"})
    assert loaded.status_code == 200, loaded.text
    client = openai.OpenAI(base_url=url, api_key="user-key", max_retries=0)
    assert [_greedy(client, "late", p) for p in PROMPTS] == expected["late"]
    assert _greedy(client, "triage", PROMPTS[0]) == expected["triage"][0]
    assert admin.post("/unload_lora_adapter", json={"lora_name": "late"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "late", PROMPTS[0])
    assert "late" not in engine.models and not engine._retired
    assert _greedy(client, "tiny", PROMPTS[1]) == expected["tiny"][1]  # the freed LoRA left the base as it was


def test_adapters_alone_are_served_on_their_base_converted_once(model_dir, tmp_path):
    adapter = _lora(model_dir, tmp_path / "solo", 4, modules=("q_proj", "down_proj", "up_proj"))
    engine = LlamaCppEngine.from_paths([f"solo={adapter}"])
    try:
        assert [(m.name, m.kind) for m in engine.models.values()] == [(model_dir.name, "base"), ("solo", "adapter")]
        with running_server(engine, limit=8) as url:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            assert _greedy(client, "solo", PROMPTS[0]) == peft_reference(model_dir, adapter, PROMPTS[0])
    finally:
        engine.close()
