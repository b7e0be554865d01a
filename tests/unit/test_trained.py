"""tunekit.models.trained: what a run produced, and attaching adapters with clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from tunekit.errors import ModelError, RunDirError
from tunekit.models.trained import attach_adapter, check_adapter_dir, load_with_adapter, trained_artifact
from tunekit.runs import RunPaths


def _lora(model_dir, out, *, seed=1, hidden=None):
    """A random (non-zero) LoRA adapter saved in `out`, on the model in `model_dir` or, with
    `hidden`, on a different random Llama of that width."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if hidden is None:
        base = AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        base = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_trained_artifact_is_the_full_model_or_the_adapter(tmp_path, tiny_model_dir):
    run = RunPaths(tmp_path / "run")
    with pytest.raises(RunDirError, match="no trained model") as info:
        trained_artifact(run)
    assert "tunekit train" in info.value.hint
    _lora(tiny_model_dir, run.adapter_dir)
    assert (trained_artifact(run).kind, trained_artifact(run).path) == ("adapter", run.adapter_dir)
    run.model_dir.mkdir()
    (run.model_dir / "config.json").write_text("{}")
    assert (trained_artifact(run).kind, trained_artifact(run).path) == ("full", run.model_dir)


def test_check_adapter_dir_refuses_non_adapters_and_pickles(tmp_path, tiny_model_dir):
    adapter = _lora(tiny_model_dir, tmp_path / "a")
    assert check_adapter_dir(adapter)["r"] == 4
    with pytest.raises(RunDirError, match="not a PEFT adapter directory"):
        check_adapter_dir(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="pickled adapter weights") as info:
        check_adapter_dir(pickled)
    assert "allow_pickle" in info.value.hint
    assert check_adapter_dir(pickled, allow_pickle=True)["r"] == 4
    (pickled / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        check_adapter_dir(pickled, allow_pickle=True)


def test_attach_adapter_adds_next_to_others_and_refuses_another_base(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    first = _lora(tiny_model_dir, tmp_path / "first", seed=1)
    second = _lora(tiny_model_dir, tmp_path / "second", seed=2)
    foreign = _lora(None, tmp_path / "foreign", hidden=32)
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), first, "tiny", name="first")
    same = attach_adapter(model, second, "tiny", name="second")
    assert same is model and set(model.peft_config) == {"first", "second"}
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        a, b = (model(ids, adapter_names=[n]).logits for n in ("first", "second"))
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(a, b) and not torch.allclose(a, plain)  # each adapter is its own

    with pytest.raises(ModelError, match="does not fit base model 'tiny'") as info:
        attach_adapter(model, foreign, "tiny", name="foreign")
    assert "trained on" in info.value.hint
    assert set(model.peft_config) == {"first", "second"}  # the failed one left nothing behind
    with torch.inference_mode():
        assert torch.equal(model(ids, adapter_names=["first"]).logits, a)


def test_load_with_adapter_uses_the_adapter_tokenizer(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    adapter = _lora(tiny_model_dir, tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    tokenizer.save_pretrained(adapter)
    model, loaded = load_with_adapter(str(tiny_model_dir), adapter)
    assert loaded.chat_template == tokenizer.chat_template
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == model.peft_config["default"].r
