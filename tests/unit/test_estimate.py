"""`tunekit estimate`: exact parameter counts on meta-device models, the memory model, tokens and time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.config import parse_recipe
from tunekit.errors import ModelError, RecipeError
from tunekit.models.shapes import named_config
from tunekit.runs import RunPaths, write_jsonl
from tunekit.train.estimate import count_shapes, estimate
from tunekit.train.memory import NF4_DOUBLE_QUANT_BITS

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
GB = 1e9


def make_recipe(tmp_path: Path, rows: int = 40, **train) -> object:
    """A recipe over a small chat file; `base_model`, `data` keys and `train` keys are overridable."""
    base_model = train.pop("base_model", "llama-3.1-8b")
    data = {"train": "train.jsonl", "val_fraction": 0.0, **train.pop("data", {})}
    if not (tmp_path / "train.jsonl").exists():
        write_jsonl(
            tmp_path / "train.jsonl",
            [
                {"messages": [{"role": "user", "content": f"ticket {i}: where is order {i}?"},
                              {"role": "assistant", "content": '{"category": "shipping"}' + " ok" * (i % 5)}]}
                for i in range(rows)
            ],
        )
    raw = {"name": "t", "base_model": base_model, "output_dir": str(tmp_path / "runs"), "data": data, "train": train}
    return parse_recipe(raw, base_dir=tmp_path)


@pytest.fixture(scope="module")
def llama8b():
    return named_config("llama-3.1-8b")


def test_llama_31_8b_lora_counts_are_exact(tmp_path, llama8b):
    qkvo = count_shapes(llama8b, make_recipe(tmp_path, lora={"r": 16, "target_modules": QKVO}))
    every = count_shapes(llama8b, make_recipe(tmp_path, lora={"r": 16, "target_modules": "all-linear"}))
    assert qkvo.adapter == 13_631_488
    assert every.adapter == 41_943_040
    assert qkvo.total == every.total == 8_030_261_248


def test_counts_match_the_module_shapes(tmp_path, llama8b):
    """PEFT's count equals r·(in + out) per adapted linear layer; DoRA adds one magnitude per output."""
    h, i, layers = llama8b.hidden_size, llama8b.intermediate_size, llama8b.num_hidden_layers
    kv = llama8b.num_key_value_heads * llama8b.head_dim
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    r = 8
    lora = layers * sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes)
    magnitudes = layers * sum(fan_out for _, fan_out in shapes)
    plain = count_shapes(llama8b, make_recipe(tmp_path, lora={"r": r}))
    dora = count_shapes(llama8b, make_recipe(tmp_path, adapter="dora", lora={"r": r}))
    rslora = count_shapes(llama8b, make_recipe(tmp_path, adapter="rslora", lora={"r": r}))
    assert plain.adapter == rslora.adapter == lora == 20_971_520
    assert dora.adapter == lora + magnitudes == 20_971_520 + 1_376_256
    # QLoRA quantizes every linear weight of the decoder: all parameters but embeddings, head and norms
    assert plain.quantizable == plain.total - 2 * 128256 * h - (2 * layers + 1) * h


def test_full_fine_tuning_trains_every_parameter(tmp_path):
    result = estimate(make_recipe(tmp_path, adapter="full", learning_rate=1e-5))
    assert result.recipe_trainable_params == result.total_params == 8_030_261_248
    assert result.recipe_mode == "full"
    # the LoRA columns still use the recipe's lora settings
    assert result.trainable_params["lora"] == 41_943_040


def test_memory_of_the_8b_is_ordered_and_in_a_sane_range(tmp_path):
    result = estimate(make_recipe(tmp_path, batch_size=4, data={"max_length": 2048}))
    full, lora, qlora = (result.memory[m] for m in ("full", "lora", "qlora"))
    params, adapter = result.total_params, result.trainable_params["lora"]
    assert full.total > lora.total > qlora.total
    assert lora.weights == 2 * params and full.weights == 2 * params
    assert full.trainable_state == 14 * params  # 16 bytes per parameter in all
    assert lora.trainable_state == qlora.trainable_state == 16 * adapter
    assert 5.0 * GB < qlora.weights < 6.0 * GB  # NF4 + double quant, embeddings and head in bf16
    quantized = params - 2 * 128256 * 4096 - 65 * 4096
    assert qlora.weights == pytest.approx(quantized * NF4_DOUBLE_QUANT_BITS / 8 + 2 * (params - quantized), abs=1)
    # 4 x 2048 tokens: checkpointing keeps only layer inputs (+ one layer), several-fold less
    assert lora.activations_checkpointing * 5 < lora.activations_no_checkpointing
    assert 40 * GB < lora.activations_no_checkpointing < 70 * GB  # LoRA dropout copies every adapted input
    assert 125 * GB < full.total_with_checkpointing < 140 * GB
    assert 9 * GB < qlora.total_with_checkpointing < 14 * GB
    # the unfused fp32 logits (+ gradient) would be b·s·V·8 bytes; the chunked head needs far less
    assert result.logits_unfused == 4 * 2048 * 128256 * 8
    assert lora.lm_head < result.logits_unfused / 5


def test_gradient_checkpointing_setting_picks_the_total(tmp_path):
    off = estimate(make_recipe(tmp_path)).memory["lora"]
    on = estimate(make_recipe(tmp_path, gradient_checkpointing=True)).memory["lora"]
    assert on.total == off.total_with_checkpointing < off.total


def test_8bit_optimizer_shrinks_the_adam_moments(tmp_path):
    plain = estimate(make_recipe(tmp_path, adapter="full", learning_rate=1e-5))
    paged = estimate(make_recipe(tmp_path, adapter="full", learning_rate=1e-5, fast={"optimizer": "paged_adamw_8bit"}))
    params, adapter = plain.total_params, plain.trainable_params["lora"]
    assert paged.memory["full"].trainable_state == 8 * params  # bf16 grads 2 + fp32 master 4 + 8-bit moments 2
    assert paged.memory["lora"].trainable_state == 10 * adapter
    assert plain.memory["full"].trainable_state - paged.memory["full"].trainable_state == 6 * params


def test_dpo_doubles_the_sequences(tmp_path):
    sft = estimate(make_recipe(tmp_path)).memory["lora"]
    dpo = estimate(make_recipe(tmp_path, method="dpo", learning_rate=5e-6)).memory["lora"]
    assert dpo.activations_no_checkpointing == 2 * sft.activations_no_checkpointing
    assert dpo.weights == sft.weights


def test_unknown_shape_and_unreachable_hub_model_are_clear_errors(tmp_path):
    recipe = make_recipe(tmp_path)
    with pytest.raises(ModelError, match="unknown model shape 'llama-9b'") as err:
        estimate(recipe, shape="llama-9b")
    assert "llama-3.1-8b" in err.value.hint
    with pytest.raises(ModelError, match="cannot read the config of base_model 'no-org/no-model'") as err:
        estimate(make_recipe(tmp_path, base_model="no-org/no-model"))
    assert "--shape" in err.value.hint


def test_unknown_target_module_names_the_real_ones(tmp_path):
    with pytest.raises(RecipeError) as err:
        estimate(make_recipe(tmp_path, lora={"target_modules": ["qq_proj"]}))
    assert "train.lora.target_modules" in str(err.value) and "q_proj" in str(err.value)


def _chat_tokens(tokenizer, rows: list[dict]) -> int:
    return sum(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows)


def test_tokens_per_epoch_and_time_from_a_prepared_run(tmp_path, tiny_model_dir, smol_tokenizer):
    from tunekit.data.prepare import prepare_data
    from tunekit.runs import read_jsonl

    recipe = make_recipe(tmp_path, rows=40, base_model=str(tiny_model_dir), epochs=2, batch_size=4)
    run = RunPaths(recipe.run_dir)
    prepare_data(recipe, run, smol_tokenizer)
    train_rows = read_jsonl(run.split("train"))
    expected = _chat_tokens(smol_tokenizer, train_rows)

    result = estimate(recipe, tokens_per_s=100.0)
    assert result.train_examples == len(train_rows) == 40
    assert result.tokens_per_epoch == expected
    assert result.tokens_source.startswith("prepared data")
    assert result.total_tokens == 2 * expected and result.total_steps == 20
    assert result.seconds == pytest.approx(2 * expected / 100.0)

    # without --tokens-per-s, the speed logged by an earlier run (median of its log lines)
    write_jsonl(run.metrics, [{"step": 1, "loss": 2.0, "tokens_per_s": 300.0}, {"step": 5, "loss": 1.0, "tokens_per_s": 500.0},
                              {"step": 10, "loss": 0.5, "tokens_per_s": 400.0}, {"step": 10, "eval_loss": 0.7}])
    measured = estimate(recipe)
    assert measured.tokens_per_s == 400.0 and measured.tokens_per_s_source.startswith("measured")
    assert measured.seconds == pytest.approx(2 * expected / 400.0)


def test_tokens_from_the_raw_train_file_before_preparing(tmp_path, tiny_model_dir, smol_tokenizer):
    from tunekit.runs import read_jsonl

    recipe = make_recipe(tmp_path, rows=30, base_model=str(tiny_model_dir), data={"val_fraction": 0.2})
    result = estimate(recipe)
    rows = read_jsonl(tmp_path / "train.jsonl")
    assert result.train_examples == 24  # 80% of 30 is kept for training
    assert result.tokens_per_epoch == round(0.8 * _chat_tokens(smol_tokenizer, rows))
    assert result.tokens_source == "tokenized train file"
    assert result.seconds is None and any("--tokens-per-s" in n for n in result.notes)


def test_cli_prints_json_and_a_table(tmp_path, tiny_model_dir):
    import typer
    from typer.testing import CliRunner

    from tunekit.cli.estimate import register

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `estimate` a named subcommand
    register(app)
    make_recipe(tmp_path, base_model=str(tiny_model_dir))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n  val_fraction: 0.0\ntrain:\n  learning_rate: 0.002\n")

    help_text = CliRunner().invoke(app, ["estimate", "--help"])
    assert help_text.exit_code == 0 and "--shape" in help_text.output and "--tokens-per-s" in help_text.output
    result = CliRunner().invoke(app, ["estimate", str(recipe), "--json", "--tokens-per-s", "50"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == str(tiny_model_dir) and data["architecture"] == "Llama"
    assert data["total_params"] > data["trainable_params"]["lora"] > 0
    assert set(data["memory"]) == {"full", "lora", "qlora"}
    assert data["memory"]["full"]["total"] > data["memory"]["lora"]["total"] > data["memory"]["qlora"]["total"]
    assert data["train_examples"] == 40 and data["tokens_per_s"] == 50
    assert any("learning_rate 0.002 is high for lora" in w for w in data["warnings"])

    table = CliRunner().invoke(app, ["estimate", str(recipe), "--shape", "qwen2.5-0.5b"])
    assert table.exit_code == 0, table.output
    assert "QLoRA" in table.output and "LoRA ◀ recipe" in table.output and "warning:" in table.output


@pytest.mark.slow
def test_embedded_model_config_is_read_without_converting_weights(tmp_path):
    """The embedded SmolLM2 is measured from its GGUF metadata; it matches the smollm2-135m shape."""
    from tunekit.models.loading import tunekit_home
    from tunekit.train.estimate import model_config

    recipe = make_recipe(tmp_path, base_model="smollm2-135m-instruct")
    config, described = model_config(recipe)
    embedded = count_shapes(config, recipe)
    shape = count_shapes(named_config("smollm2-135m"), recipe)
    assert described == "smollm2-135m-instruct"
    assert (embedded.total, embedded.adapter) == (shape.total, shape.adapter) == (134_515_008, 4_884_480)
    assert not (tunekit_home() / "models").exists()  # nothing was converted or cached
