"""The export stage on a tiny random Llama with a non-trivial (randomly initialised) LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.export_helpers import LORA_ALPHA, LORA_R, PROMPTS, chat_row, make_run
from tunekit.errors import RunDirError
from tunekit.export import ExportResult, check_parity, export, parity_prompts
from tunekit.export.parity import first_difference
from tunekit.runs import RunPaths, write_jsonl

@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    recipe, run = make_run(tmp_path_factory.mktemp("export"), tiny_model_dir)
    return recipe, run, export(recipe, run)


def _chat_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _greedy(model, tokenizer, user: str, **kwargs) -> list[int]:
    ids = torch.tensor([_chat_ids(tokenizer, user)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, **kwargs)
    return out[0, ids.shape[1] :].tolist()


def test_merged_model_loads_plainly_and_generates_what_base_plus_adapter_generates(exported, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run, _ = exported
    merged = AutoModelForCausalLM.from_pretrained(run.merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.merged_dir)
    assert not hasattr(merged, "peft_config")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir)).eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    outputs = []
    for prompt in PROMPTS:
        expected = _greedy(reference, tokenizer, prompt, eos_token_id=eos, pad_token_id=eos)
        # The merged side relies on its own generation_config for where to stop, as a user would.
        assert _greedy(merged, tokenizer, prompt) == expected, prompt
        outputs.append(expected)
    assert len({tuple(o) for o in outputs}) > 1  # the prompts really steer the model
    eos_ids = merged.generation_config.eos_token_id
    assert eos in (eos_ids if isinstance(eos_ids, list) else [eos_ids])


def test_merged_weights_equal_base_plus_scaled_lora_product(exported, tiny_model_dir):
    _, run, _ = exported
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(run.merged_dir / "model.safetensors")
    adapter = load_file(run.adapter_dir / "adapter_model.safetensors")
    name = "model.layers.1.self_attn.q_proj"
    lora_a = adapter[f"base_model.model.{name}.lora_A.weight"]
    lora_b = adapter[f"base_model.model.{name}.lora_B.weight"]
    expected = base[f"{name}.weight"] + (lora_b @ lora_a) * (LORA_ALPHA / LORA_R)
    assert (merged[f"{name}.weight"] - base[f"{name}.weight"]).abs().max() > 1e-2  # the merge changed it
    assert torch.allclose(merged[f"{name}.weight"], expected, atol=1e-5, rtol=0)
    # Every adapted projection moved; layers the adapter does not touch are bit-identical.
    for key, tensor in base.items():
        changed = not torch.equal(merged[key], tensor)
        assert changed == key.endswith("_proj.weight"), key
    assert not any("lora" in k or "base_layer" in k for k in merged)


def test_config_is_clean_and_embeddings_stay_tied(exported, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, run, result = exported
    config = json.loads((run.merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True and config["dtype"] == "float32"
    assert not (run.merged_dir / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(run.merged_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    base_embed = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight, base_embed)
    assert result.merged["tie_word_embeddings"] is True and result.merged["untied_embeddings"] is False


def test_chat_template_round_trips(exported, tiny_model_dir):
    from transformers import AutoTokenizer

    _, run, _ = exported
    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    exported_tokenizer = AutoTokenizer.from_pretrained(run.merged_dir)
    chat = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Ticket 9: refund please"},
        {"role": "assistant", "content": '{"category": "billing"}'},
        {"role": "user", "content": "and the priority?"},
    ]
    for add_generation_prompt in (False, True):
        kwargs = {"add_generation_prompt": add_generation_prompt}
        assert exported_tokenizer.apply_chat_template(chat, tokenize=False, **kwargs) == original.apply_chat_template(
            chat, tokenize=False, **kwargs
        )
        assert exported_tokenizer.apply_chat_template(chat, **kwargs) == original.apply_chat_template(chat, **kwargs)
    assert exported_tokenizer.eos_token == "<|im_end|>"


def test_report_numbers_and_files(exported):
    recipe, run, result = exported
    parity = result.parity
    assert parity["n"] == 3 and parity["identical"] == 3 and parity["passed"] is True
    assert parity["prompts"] == PROMPTS[:3]  # taken from the test split
    assert parity["max_abs_logit_diff"] < 1e-3 and parity["top1_agreement"] == 1.0
    assert all(d["first_difference"] is None for d in parity["details"])
    assert isinstance(result, ExportResult) and result.report_path == run.export_dir / "export_report.json"
    on_disk = json.loads(result.report_path.read_text())
    assert on_disk == json.loads(json.dumps(result.to_json())) and on_disk["parity"]["identical"] == 3
    # The adapter copy is byte-identical to what training wrote.
    copied = run.export_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (copied / name).read_bytes() == (run.adapter_dir / name).read_bytes(), name
    names = {f["name"] for f in result.merged["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    card = (run.merged_dir / "README.md").read_text()
    assert str(recipe.base_model) in card and f"| LoRA rank r / alpha (scale) | {LORA_R} / {LORA_ALPHA} (2) |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "q_proj" in card and "down_proj" in card


def test_missing_adapter_is_a_run_dir_error(tmp_path, tiny_model_dir):
    recipe, run = make_run(tmp_path, tiny_model_dir)
    for path in run.adapter_dir.iterdir():
        path.unlink()
    with pytest.raises(RunDirError, match="no trained model in .*adapter_config.json") as info:
        export(recipe, run)  # the directory is there but empty
    assert "tunekit train" in info.value.hint
    run.adapter_dir.rmdir()
    with pytest.raises(RunDirError, match="tunekit train"):
        export(recipe, run)
    assert not run.export_dir.exists()


def test_adapter_on_tied_lm_head_unties_instead_of_corrupting_embeddings(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    overrides = ["export.adapter=false", "eval.max_new_tokens=8"]
    recipe, run = make_run(tmp_path, tiny_model_dir, target_modules=["q_proj", "lm_head"], overrides=overrides)
    result = export(recipe, run)
    assert result.merged["untied_embeddings"] is True and result.adapter is None
    assert result.parity["identical"] == 3 and result.parity["max_abs_logit_diff"] < 1e-3
    assert json.loads((run.merged_dir / "config.json").read_text())["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(run.merged_dir)
    base_embed = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight, base_embed)  # input side untouched
    assert (model.lm_head.weight - base_embed).abs().max() > 1e-2  # output side carries the LoRA


def test_parity_check_catches_a_wrong_export(exported, tmp_path, tiny_model_dir):
    """The base model posing as the merged one must fail the gate, with the first difference shown."""
    _, run, _ = exported
    prompts = parity_prompts(run)
    report = check_parity(str(tiny_model_dir), run.adapter_dir, tiny_model_dir, prompts, 8)
    assert report["passed"] is False and report["identical"] < 3 and report["max_abs_logit_diff"] > 1e-2
    # export() turns that verdict into an error that names the prompt.
    from tunekit.export.parity import parity_failure_message

    message = parity_failure_message(report)
    first_bad = next(d for d in report["details"] if not d["identical"])
    assert first_bad["prompt"] in message and "base + adapter" in message


def test_first_difference_is_the_first_differing_token_or_the_shorter_length():
    """The one helper both parity checks (merged vs base + adapter, GGUF vs merged) report with."""
    assert first_difference([5, 6, 7], [5, 6, 7]) is None
    assert first_difference([5, 6, 7], [5, 9, 7]) == 1
    assert first_difference([5, 6], [5, 6, 7]) == first_difference([5, 6, 7], [5, 6]) == 2
    assert first_difference([], []) is None and first_difference([], [1]) == 0


def test_parity_prompts_prefer_test_then_val_then_fixed(tmp_path):
    from tunekit.export.parity import FALLBACK_PROMPTS

    run = RunPaths(tmp_path / "run")
    assert [p[-1]["content"] for p in parity_prompts(run)] == FALLBACK_PROMPTS
    write_jsonl(run.split("val"), [chat_row(f"val {i}") for i in range(5)])
    assert [p[-1]["content"] for p in parity_prompts(run)] == ["val 0", "val 1", "val 2"]
    write_jsonl(run.split("test"), [chat_row("test 0")])
    assert parity_prompts(run, system_prompt="Be brief.") == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "test 0"}]
    ]


def test_bfloat16_export_is_gated_against_the_rounding_noise_floor(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    overrides = ["export.dtype=bfloat16", "export.adapter=false", "eval.max_new_tokens=6"]
    recipe, run = make_run(tmp_path, tiny_model_dir, overrides=overrides, test_split=False)
    result = export(recipe, run)
    assert json.loads((run.merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    parity = result.parity
    assert parity["passed"] is True and parity["dtype"] == "bfloat16" and parity["template_identical"] is True
    assert parity["prompts"] == [p[-1]["content"] for p in parity_prompts(run)]  # fixed prompts: no splits
    assert 0 < parity["error_ratio"] <= 2.5 and parity["unmerged_error_rms"] > 0
    assert parity["max_abs_logit_diff"] > 0 and parity["max_new_tokens"] == 6  # reported, not gated

    # The unmerged base saved in bf16 posing as the export is far outside the noise floor.
    unmerged = tmp_path / "unmerged-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(unmerged)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (unmerged / name).write_bytes((run.merged_dir / name).read_bytes())
    wrong = check_parity(str(tiny_model_dir), run.adapter_dir, unmerged, parity_prompts(run)[:2], 4, dtype="bfloat16")
    assert wrong["passed"] is False and wrong["error_ratio"] > 10


def test_end_of_turn_ids_come_from_the_chat_template(smol_tokenizer_dir):
    from transformers import AutoTokenizer, GenerationConfig

    from tunekit.models import end_of_turn_ids

    im_end = AutoTokenizer.from_pretrained(smol_tokenizer_dir).convert_tokens_to_ids("<|im_end|>")
    # A tokenizer whose eos is the document end still stops generation at the template's turn end.
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir, eos_token="<|endoftext|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end_of_turn_ids(tokenizer) == [endoftext, im_end]
    assert end_of_turn_ids(tokenizer, GenerationConfig(eos_token_id=[im_end, 7])) == [endoftext, im_end, 7]


def test_cli_export_prints_paths_and_parity(tmp_path, tiny_model_dir):
    import typer
    from typer.testing import CliRunner

    from tunekit.cli.export import register

    _, run = make_run(tmp_path, tiny_model_dir)
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps `export` a named sub-command
    result = CliRunner().invoke(app, ["export", str(run.root), "--set", "export.formats=[]"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert str(run.export_dir / "adapter") in output and "adapter_model.safetensors" in output
    assert "parity: skipped (no merged model written)" in output
    help_text = CliRunner().invoke(app, ["export", "--help"])
    assert help_text.exit_code == 0 and "--set" in help_text.output


def test_dora_adapter_merges_exactly(tmp_path, tiny_model_dir):
    """DoRA's magnitude vectors are folded in too: the merged model computes base + DoRA adapter."""
    recipe, run = make_run(tmp_path, tiny_model_dir, use_dora=True, overrides=["export.adapter=false", "eval.max_new_tokens=8"])
    assert json.loads((run.adapter_dir / "adapter_config.json").read_text())["use_dora"] is True
    result = export(recipe, run)
    parity = result.parity
    assert parity["passed"] is True and parity["identical"] == 3 and parity["max_abs_logit_diff"] < 1e-3
    merged = load_file(run.merged_dir / "model.safetensors")
    assert not any("lora" in k or "magnitude" in k for k in merged)


def test_full_fine_tune_run_exports_its_model(tmp_path, tiny_model_dir):
    """A run with `model/` (full fine-tune) instead of `adapter/`: the merged model is that model."""
    import shutil

    recipe, run = make_run(tmp_path, tiny_model_dir, overrides=["export.dtype=bfloat16"])
    shutil.rmtree(run.adapter_dir)
    shutil.copytree(tiny_model_dir, run.root / "model")
    result = export(recipe, run)
    assert result.source == "full" and result.adapter is None and result.parity is None
    original, merged = load_file(tiny_model_dir / "model.safetensors"), load_file(run.merged_dir / "model.safetensors")
    assert set(merged) == set(original)
    for key, tensor in original.items():
        assert merged[key].dtype == torch.bfloat16 and torch.equal(merged[key], tensor.to(torch.bfloat16)), key
    generation = json.loads((run.merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # <|im_end|>: the turn end of the SmolLM2 template
    export(recipe, run)  # exporting again replaces the merged directory cleanly
