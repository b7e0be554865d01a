"""Stacked mixed-adapter batches (tunekit.serve.lora_batch) compute what PEFT's own mixed-batch
forward computes, for one adapter, a mix with the bare base, different ranks and scalings, and
after adapters come and go."""

from __future__ import annotations

import pytest
import torch

from tunekit.serve.lora_batch import StackedAdapters


@pytest.fixture(scope="module")
def three_adapters(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "o_proj"], init_lora_weights=False))
    model.add_adapter("c", LoraConfig(r=8, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    return model.eval()


def peft_logits(model, ids, names):
    """PEFT's own mixed-batch forward: the stacked one removed from every layer."""
    for module in model.modules():
        module.__dict__.pop("_mixed_batch_forward", None)
    with torch.no_grad():
        return model(input_ids=ids, adapter_names=names).logits


def stacked_logits(model, ids, names, generation):
    stacks = StackedAdapters()
    layers = stacks.refresh(model, generation)
    with torch.no_grad():
        return model(input_ids=ids, adapter_names=names).logits, layers


@pytest.mark.parametrize(
    "names",
    [
        ["a", "a", "a", "a"],  # one adapter: the single-slot path
        ["a", "b", "c", "__base__"],  # every adapter and the base in one batch
        ["c", "__base__", "c", "b"],
        ["__base__"] * 4,
    ],
)
def test_stacked_batches_equal_peft_mixed_batches(three_adapters, names):
    ids = torch.randint(0, 200, (4, 11))
    expected = peft_logits(three_adapters, ids, names)
    got, layers = stacked_logits(three_adapters, ids, names, generation=("test", tuple(names)))
    assert layers == sum(1 for m in three_adapters.modules() if hasattr(m, "lora_A") and len(m.lora_A)) > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the adapters do matter: the answer differs from the bare base wherever a row has one
    if set(names) != {"__base__"}:
        base = peft_logits(three_adapters, ids, ["__base__"] * 4)
        differs = [not torch.allclose(got[i], base[i]) for i in range(4)]
        assert differs == [n != "__base__" for n in names]


def test_restacked_after_an_adapter_is_deleted(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False), adapter_name="x").eval()  # fmt: skip
    model.add_adapter("y", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.randint(0, 200, (2, 7))
    stacks = StackedAdapters()
    stacks.refresh(model, 1)
    with torch.no_grad():
        before = model(input_ids=ids, adapter_names=["x", "y"]).logits
    model.delete_adapter("x")
    stacks.refresh(model, 2)
    assert stacks.slots == {"y": 1}
    with torch.no_grad():
        after = model(input_ids=ids, adapter_names=["__base__", "y"]).logits  # y moved from slot 2 to slot 1
    torch.testing.assert_close(after[1], before[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, peft_logits(model, ids, ["__base__", "y"]), rtol=1e-5, atol=1e-5)
