"""`chat_template:` in the recipe, on a tiny random base model whose tokenizer has no template.

The base is the tiny Llama of tests/conftest.py with the SmolLM2 tokenizer made to look like a
pretrained one: no chat template, `<|endoftext|>` as bos/eos/pad. `phi-3` needs four marker
tokens that vocabulary lacks (added, rows trained); `alpaca` is plain text closed by the eos.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunekit.config import parse_recipe
from tunekit.config.recipe import CHAT_TEMPLATES_DIR, shipped_chat_templates
from tunekit.errors import ModelError, RecipeError
from tunekit.models import end_of_turn_ids, load_tokenizer
from tunekit.models import loading
from tunekit.models.templates import SHIPPED_TOKENS
from tunekit.runs import RunPaths, write_jsonl

PHI3_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Ticket 1: my parcel is late."},
    {"role": "assistant", "content": '{"category": "shipping"}'},
    {"role": "user", "content": "Ticket 2: refund please."},
    {"role": "assistant", "content": '{"category": "billing"}'},
]


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny random Llama with a base model's tokenizer: no chat template at all."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    for path in tiny_model_dir.iterdir():
        if path.name.endswith(".safetensors") or path.name in ("config.json", "generation_config.json"):
            shutil.copy(path, out / path.name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.bos_token = tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(out)
    for name in ("config.json", "generation_config.json"):  # a base model ends its text with <|endoftext|>
        config = json.loads((out / name).read_text())
        config.update({key: 0 for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config})
        (out / name).write_text(json.dumps(config))
    assert not (out / "chat_template.jinja").exists()
    assert json.loads((out / "tokenizer_config.json").read_text()).get("chat_template") is None
    return out


def _recipe(tmp_path, base_dir, chat_template, chats=None, **train):
    recipe = parse_recipe(
        {
            "base_model": str(base_dir),
            "chat_template": chat_template,
            "data": {"train": "train.jsonl", "max_length": 128},
            "train": {"batch_size": 2, "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", **train},
            "output_dir": "runs",
            "name": "t",
        },
        base_dir=tmp_path,
    )
    run = RunPaths(recipe.run_dir)
    rows = [{"messages": chat, "meta": {"source": "train.jsonl", "line": i + 1}} for i, chat in enumerate(chats or [CHAT] * 4)]
    write_jsonl(run.split("train"), rows)
    return recipe, run


def _expected(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """input_ids and labels built by hand: each piece encoded alone, trained pieces keep their ids."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return ids, labels


def test_every_shipped_file_has_its_tokens_and_the_config_lists_them():
    assert sorted(SHIPPED_TOKENS) == shipped_chat_templates() == sorted(p.stem for p in CHAT_TEMPLATES_DIR.glob("*.jinja"))
    assert {"chatml", "llama-3", "gemma", "mistral", "phi-3", "alpaca"} <= set(shipped_chat_templates())


def test_a_base_model_without_template_or_recipe_key_is_refused_with_the_names(base_model_dir):
    with pytest.raises(ModelError) as error:
        load_tokenizer(str(base_model_dir))
    text = str(error.value)
    assert "has no chat template" in text and "chat_template:" in text
    for name in shipped_chat_templates():
        assert name in text


def test_an_unknown_name_is_a_recipe_error_with_the_names(tmp_path, base_model_dir):
    with pytest.raises(RecipeError) as error:
        _recipe(tmp_path, base_model_dir, "chat-ml")
    assert "chat_template: unknown chat template; use one of alpaca, chatml, gemma, llama-3, mistral, phi-3" in str(error.value)


def test_overriding_a_model_that_has_a_template_warns_once(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(loading, "_OVERRIDE_WARNED", set())
    own = load_tokenizer(str(tiny_model_dir))
    assert "<|im_start|>" in own.chat_template
    tokenizer = load_tokenizer(str(tiny_model_dir), chat_template="alpaca")
    load_tokenizer(str(tiny_model_dir), chat_template="alpaca")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "'alpaca' replaces the chat template" in err
    assert tokenizer.chat_template == (CHAT_TEMPLATES_DIR / "alpaca.jinja").read_text()
    # The instruct model's own template is used silently when the recipe names none.
    load_tokenizer(str(tiny_model_dir))
    assert "warning" not in capsys.readouterr().err


def test_alpaca_mask_equals_the_hand_built_tensors(tmp_path, base_model_dir):
    from tunekit.train.sft import build_trainer

    recipe, run = _recipe(tmp_path, base_model_dir, "alpaca", max_steps=1)
    trainer, _ = build_trainer(recipe, run)
    tokenizer = trainer.processing_class
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|endoftext|>"
    ids, labels = _expected(
        tokenizer,
        [
            ("Answer in JSON.\n\n### Instruction:\nTicket 1: my parcel is late.\n\n### Response:\n", False),
            ('{"category": "shipping"}<|endoftext|>', True),
            ("\n\n### Instruction:\nTicket 2: refund please.\n\n### Response:\n", False),
            ('{"category": "billing"}<|endoftext|>', True),
            ("\n\n", False),
        ],
    )
    example = trainer.train_dataset[0]
    assert torch.equal(torch.tensor(example["input_ids"]), torch.tensor(ids))
    assert torch.equal(torch.tensor(example["labels"]), torch.tensor(labels))
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def test_phi3_adds_its_tokens_and_the_mask_equals_the_hand_built_tensors(tmp_path, base_model_dir):
    from tunekit.train.sft import build_trainer

    recipe, run = _recipe(tmp_path, base_model_dir, "phi-3", max_steps=1)
    trainer, _ = build_trainer(recipe, run)
    tokenizer = trainer.processing_class
    new_ids = [49152, 49153, 49154, 49155]
    assert tokenizer.convert_tokens_to_ids(PHI3_TOKENS) == new_ids and tokenizer.eos_token == "<|end|>"
    ids, labels = _expected(
        tokenizer,
        [
            ("<|system|>\nAnswer in JSON.<|end|>\n<|user|>\nTicket 1: my parcel is late.<|end|>\n<|assistant|>\n", False),
            ('{"category": "shipping"}<|end|>', True),
            ("\n<|user|>\nTicket 2: refund please.<|end|>\n<|assistant|>\n", False),
            ('{"category": "billing"}<|end|>', True),
            ("\n", False),
        ],
    )
    assert ids.count(49155) == 5 and ids.count(49154) == 2  # the markers are single tokens
    example = trainer.train_dataset[0]
    assert torch.equal(torch.tensor(example["input_ids"]), torch.tensor(ids))
    assert torch.equal(torch.tensor(example["labels"]), torch.tensor(labels))
    assert end_of_turn_ids(tokenizer)[0] == 49155  # generation stops at <|end|>
    # The model grew a row for each new token, and its (tied) embeddings train with the adapter.
    model = trainer.model
    assert model.get_input_embeddings().weight.shape[0] == 49156
    assert "embed_tokens" in model.peft_config["default"].modules_to_save
    # TRL's fused LM head reads lm_head.weight: it must be the trained (tied) copy.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.requires_grad


def _train(tmp_path, base_model_dir, template, chats=None, steps=3):
    from tunekit.train import train

    recipe, run = _recipe(tmp_path, base_model_dir, template, chats, max_steps=steps, learning_rate=1e-2)
    result = train(recipe, run, show_progress=False)
    assert result.steps == steps
    return recipe, run


def test_phi3_training_saves_the_template_and_tokens_and_moves_the_new_rows(tmp_path, base_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tunekit.models.trained import load_with_adapter

    recipe, run = _train(tmp_path, base_model_dir, "phi-3")
    saved = AutoTokenizer.from_pretrained(run.adapter_dir)
    assert saved.chat_template == (CHAT_TEMPLATES_DIR / "phi-3.jinja").read_text()
    assert saved.convert_tokens_to_ids(PHI3_TOKENS) == [49152, 49153, 49154, 49155] and saved.eos_token == "<|end|>"
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert "embed_tokens" in config["modules_to_save"]
    assert json.loads(run.manifest.read_text())["training"]["added_tokens"] == PHI3_TOKENS

    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    # The trained embedding (and its tied lm_head copy), nothing else besides LoRA: no frozen originals.
    assert sorted(k for k in weights if "lora_" not in k) == ["base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight"]
    embedding = weights["base_model.model.model.embed_tokens.weight"]
    assert torch.equal(weights["base_model.model.lm_head.weight"], embedding)
    assert embedding.shape == (49156, 64)
    base = load_file(base_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    start = base.mean(dim=0, keepdim=True).expand(4, -1)  # where the new rows began
    rows = embedding[49152:]
    assert (rows - start).abs().amax(dim=1).min() > 1e-3, "every new token's row moved"

    # Eval, export and serve load base + adapter through here: the base grows to fit, and the
    # trained rows are what the model then uses.
    model, tokenizer = load_with_adapter(str(base_model_dir), run.adapter_dir)
    assert tokenizer.eos_token == "<|end|>" and len(tokenizer) == 49156
    with torch.no_grad():
        used = model.get_input_embeddings()(torch.tensor([49152, 49153, 49154, 49155]))
    assert torch.equal(used, rows)
    assert torch.equal(model.get_output_embeddings().weight[49152:], rows)  # tied: the output rows too


def test_alpaca_training_adds_nothing_and_saves_the_template(tmp_path, base_model_dir):
    from transformers import AutoTokenizer

    recipe, run = _train(tmp_path, base_model_dir, "alpaca")
    saved = AutoTokenizer.from_pretrained(run.adapter_dir)
    assert len(saved) == 49152 and saved.chat_template == (CHAT_TEMPLATES_DIR / "alpaca.jinja").read_text()
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None


def test_a_jinja_file_next_to_the_recipe_is_used_and_its_markers_added(tmp_path, base_model_dir):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "turns.jinja").write_text(
        "{%- for m in messages -%}{{ '<|turn|>' + m['role'] + ': ' + m['content'] + '<|done|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|turn|>assistant: ' }}{%- endif -%}",
        encoding="utf-8",
    )
    recipe, run = _recipe(tmp_path, base_model_dir, "templates/turns.jinja")
    assert recipe.chat_template == str(tmp_path / "templates" / "turns.jinja")
    tokenizer, added = loading.load_tokenizer_with_template(str(base_model_dir), chat_template=recipe.chat_template)
    assert tokenizer.convert_ids_to_tokens(added) == ["<|turn|>", "<|done|>"]
    text = tokenizer.apply_chat_template(CHAT[1:3], tokenize=False)
    assert text == "<|turn|>user: Ticket 1: my parcel is late.<|done|>\n<|turn|>assistant: {\"category\": \"shipping\"}<|done|>\n"
    # The marker that closes a reply becomes the eos: generation (and a GGUF export) stops on it.
    assert tokenizer.eos_token == "<|done|>"
    assert end_of_turn_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|done|>")


def test_a_missing_jinja_file_is_a_recipe_error(tmp_path, base_model_dir):
    from tunekit.config import load_recipe

    (tmp_path / "recipe.yaml").write_text(
        f"base_model: {base_model_dir}\nchat_template: missing.jinja\ndata:\n  train: train.jsonl\n", encoding="utf-8"
    )
    (tmp_path / "train.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(RecipeError) as error:
        load_recipe(tmp_path / "recipe.yaml")
    assert f"chat_template: file not found: {tmp_path / 'missing.jinja'}" in str(error.value)


@pytest.mark.slow
def test_the_gguf_export_carries_the_template_and_answers_in_it(tmp_path, base_model_dir):
    """Trained to answer "OK." in phi-3 turns, the merged model, the GGUF metadata and the Modelfile
    carry phi-3 and <|end|>; llama.cpp, rendering the GGUF's own template, answers exactly as the
    HF model does and stops at <|end|> (export's parity check); eval and `tunekit serve RUN` answer
    "OK." and stop there too."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from tunekit.export import export
    from tunekit.export.gguf import read_gguf_metadata

    chats = [[{"role": "user", "content": f"Ticket {i}: where is my order?"}, {"role": "assistant", "content": "OK."}] for i in range(8)]
    recipe, run = _train(tmp_path, base_model_dir, "phi-3", chats, steps=40)

    # Eval: the tuned side answers in phi-3 and stops at <|end|>; the base side is asked in phi-3 too.
    from tunekit.eval.runner import evaluate

    test = [{"messages": [{"role": "user", "content": f"Ticket {i}: where is my order?"}, {"role": "assistant", "content": "OK."}]} for i in (20, 21)]
    write_jsonl(run.split("test"), test)
    evaluate(recipe, run)
    predictions = [json.loads(line) for line in (run.eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert [(p["tuned_output"], p["tuned_finish_reason"]) for p in predictions] == [("OK.", "stop")] * 2
    data = recipe.model_dump(mode="json")
    data["export"].update(formats=["gguf", "ollama"], adapter=False)
    data["export"]["gguf"]["types"] = ["F16"]
    report = export(parse_recipe(data, base_dir=tmp_path), run).to_json()

    phi3 = (CHAT_TEMPLATES_DIR / "phi-3.jinja").read_text()
    merged = AutoTokenizer.from_pretrained(run.merged_dir)
    assert merged.chat_template == phi3 and merged.eos_token == "<|end|>"
    assert json.loads((run.merged_dir / "generation_config.json").read_text())["eos_token_id"][0] == 49155
    metadata = read_gguf_metadata(next(run.export_dir.glob("*-F16.gguf")))
    assert metadata["chat_template"] == phi3 and metadata["eos_token_id"] == 49155
    parity = report["gguf"]["parity"]
    assert parity["passed"] and parity["details"]
    for answer in parity["details"]:  # export's own prompts, unlike the training ones: any answer, ended by <|end|>
        assert answer["prompt_identical"] and answer["hf"] == answer["gguf"]
        assert answer["hf_stopped"] and answer["gguf_finish"] == "stop"
    modelfile = (run.export_dir / "Modelfile").read_text()
    assert 'TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"""' in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile

    # Serving the run: the template-less base gets the recipe's template and rows for its tokens,
    # the adapter its trained embeddings; the answer stops at <|end|>.
    from tunekit.serve.engine import Engine

    engine = Engine.from_path(run.root)
    try:
        assert engine.served("t").tokenizer.chat_template == phi3
        completion = engine.chat([{"role": "user", "content": "Ticket 9: where is my order?"}], max_tokens=8, temperature=0, model="t")
        assert (completion.text, completion.finish_reason) == ("OK.", "stop")
    finally:
        engine.close()


def test_dpo_from_the_base_and_from_an_sft_adapter_with_added_tokens(tmp_path, base_model_dir):
    """DPO renders its pairs in the recipe's template; from the base it trains the new tokens' rows,
    and continuing an SFT adapter trained with phi-3 finds a base grown to fit that adapter."""
    from safetensors.torch import load_file

    from tunekit.train import train

    _, sft_run = _train(tmp_path / "sft", base_model_dir, "phi-3")
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Ticket {i}: my parcel is late."}],
            "chosen": [{"role": "assistant", "content": "OK."}],
            "rejected": [{"role": "assistant", "content": f"Not sure about parcel {i}."}],
            "meta": {"source": "train.jsonl", "line": i + 1},
        }
        for i in range(4)
    ]
    for name, dpo in (("from-base", {}), ("from-sft", {"init_from": str(sft_run.root)})):
        recipe = parse_recipe(
            {
                "base_model": str(base_model_dir),
                "chat_template": "phi-3",
                "data": {"train": "train.jsonl", "max_length": 128},
                "train": {"method": "dpo", "batch_size": 2, "max_steps": 2, "learning_rate": 1e-2, "dpo": dpo},
                "output_dir": "runs",
                "name": name,
            },
            base_dir=tmp_path,
        )
        run = RunPaths(recipe.run_dir)
        write_jsonl(run.split("train"), pairs)
        assert train(recipe, run, show_progress=False).steps == 2
        embedding = next(v for k, v in load_file(run.adapter_dir / "adapter_model.safetensors").items() if "embed_tokens" in k)
        assert embedding.shape == (49156, 64), name


@pytest.mark.parametrize(
    ("name", "opening", "closing"),
    [
        ("chatml", "", "<|im_end|>"),
        ("llama-3", "", "<|eot_id|>"),
        ("gemma", "", "<end_of_turn>"),
        ("mistral", " ", "<|endoftext|>"),  # the model writes the space after [/INST] too
        ("phi-3", "", "<|end|>"),
        ("alpaca", "", "<|endoftext|>"),
    ],
)
def test_every_shipped_template_masks_exactly_the_replies_and_their_end(base_model_dir, name, opening, closing):
    from tunekit.train.masking import tokenize_chat

    tokenizer = load_tokenizer(str(base_model_dir), chat_template=name)
    chat = tokenize_chat(tokenizer, CHAT)
    trained = [token for token, mask in zip(chat.input_ids, chat.assistant_masks) if mask]
    replies = [m["content"] for m in CHAT if m["role"] == "assistant"]
    assert tokenizer.decode(trained) == "".join(opening + reply + closing for reply in replies)
    assert tokenizer.convert_ids_to_tokens(end_of_turn_ids(tokenizer)[0]) == closing  # what generation stops on
    # The generation prompt is where the model starts writing: the reply follows it in the full chat.
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(CHAT[:3], tokenize=False).startswith(prompt + opening + replies[0])


def test_full_fine_tuning_grows_the_vocabulary_and_saves_the_template(tmp_path, base_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    from tunekit.train import train

    recipe, run = _recipe(tmp_path, base_model_dir, "chatml", adapter="full", max_steps=1)
    assert train(recipe, run, show_progress=False).steps == 1
    assert AutoConfig.from_pretrained(run.model_dir).vocab_size == 49152  # chatml's markers are in SmolLM2's vocabulary
    recipe, run = _recipe(tmp_path / "phi", base_model_dir, "phi-3", adapter="full", max_steps=1)
    assert train(recipe, run, show_progress=False).steps == 1
    config = AutoConfig.from_pretrained(run.model_dir)
    saved = AutoTokenizer.from_pretrained(run.model_dir)
    assert config.vocab_size == len(saved) == 49156 and config.eos_token_id == 49155
    assert saved.chat_template == (CHAT_TEMPLATES_DIR / "phi-3.jinja").read_text()
