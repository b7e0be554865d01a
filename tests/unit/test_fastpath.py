"""The CUDA fast path: plan rules (CPU and a simulated H100), recipe switches, CPU unchanged,
and padding-free batches scoring the same loss as padded ones on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunekit.config import parse_recipe
from tunekit.errors import RecipeError
from tunekit.models.shapes import named_config
from tunekit.train import fastpath
from tunekit.train.estimate import count_shapes
from tunekit.train.fastpath import GIB, RUNTIME_OVERHEAD_BYTES, DeviceInfo, plan_fast_path, training_args
from tunekit.train.memory import memory_by_mode

H100 = DeviceInfo(kind="cuda", name="NVIDIA H100 80GB HBM3", total_memory=80 * GIB, bf16=True, liger_available=True)
CPU = DeviceInfo(kind="cpu")


def _shape_recipe(shape="llama-3.1-8b", seq_len=2048, **train):
    """A recipe over a named shape; the plan reads only its settings, so the data file need not exist."""
    train.setdefault("lora", {"dropout": 0.0})
    raw = {"base_model": shape, "data": {"train": "train.jsonl", "max_length": seq_len}, "train": train}
    return parse_recipe(raw, base_dir=Path(__file__).parent)


def _plan(device=H100, shape="llama-3.1-8b", seq_len=2048, attn_implementation="sdpa", config=None, **train):
    recipe = _shape_recipe(shape, seq_len, **train)
    return plan_fast_path(recipe, config or named_config(shape), device, attn_implementation=attn_implementation)


def _estimate(shape="llama-3.1-8b", seq_len=2048, **train):
    return fastpath.recipe_memory_estimate(_shape_recipe(shape, seq_len, **train), named_config(shape))


def test_cpu_plan_turns_every_switch_off_and_adds_no_arguments():
    plan = _plan(CPU, batch_size=4)
    assert plan.enabled is False
    assert {name: sw.on for name, sw in plan.switches.items()} == {
        "liger": False, "padding_free": False, "fused_adamw": False, "bf16": False, "torch_compile": False,
        "activation_checkpointing": False,
    }  # fmt: skip
    assert training_args(plan) == {}
    # The recipe's own checkpointing choice still holds on CPU.
    assert _plan(CPU, gradient_checkpointing=True).checkpoint_every_n_layers == 1


def test_h100_plan_for_8b_lora_turns_the_fast_switches_on():
    plan = _plan(batch_size=4)
    assert plan.on("liger") and plan.on("bf16") and plan.on("fused_adamw") and plan.on("chunked_loss")
    assert not plan.on("torch_compile")
    assert not plan.on("padding_free")  # SDPA: a packed row would need a dense mask
    assert "sdpa" in plan.switches["padding_free"].reason
    args = training_args(plan)
    assert args["optim"] == "adamw_torch_fused" and args["bf16"] is True and args["use_liger_kernel"] is True
    # TRL scores the LM head in chunks itself and refuses Liger's fused cross-entropy.
    assert args["liger_kernel_config"]["fused_linear_cross_entropy"] is False
    manifest = plan.to_manifest()
    assert manifest["switches"]["liger"] == {"on": True, "reason": "RMSNorm, SwiGLU and RoPE kernels for llama"}


def test_checkpointing_follows_the_memory_estimate():
    estimate = _estimate(batch_size=4)
    # Checkpointing a single layer saves nothing (its recomputation is as big as what it frees);
    # from two layers on, more checkpointed layers always cost less memory.
    assert estimate(32) > estimate(None)
    costs = [estimate(None), *(estimate(n) for n in range(31, 0, -1))]
    assert costs == sorted(costs, reverse=True)

    roomy = _plan(batch_size=4)
    assert roomy.checkpoint_every_n_layers is None and not roomy.on("activation_checkpointing")
    assert roomy.memory["planned"] == estimate(None) <= roomy.memory["budget"] == int(0.85 * 80 * GIB)
    assert roomy.memory_source == "tunekit.train.memory"

    # A budget between the extremes: the plan takes the cheapest setting that fits (largest n).
    budget_gib = (estimate(1) + 3 * estimate(None)) / 4 / GIB
    middle = _plan(batch_size=4, fast={"memory_budget_gib": budget_gib})
    n = middle.checkpoint_every_n_layers
    assert n is not None and n > 1
    assert estimate(n) <= budget_gib * GIB < estimate(n + 1 if n < 32 else None)
    assert training_args(middle)["gradient_checkpointing_kwargs"] == {"use_reentrant": False, "every_n_layers": n}

    tiny_card = _plan(batch_size=4, fast={"memory_budget_gib": 8})
    assert tiny_card.checkpoint_every_n_layers == 1
    assert "still over" in tiny_card.switches["activation_checkpointing"].reason


def test_the_plan_uses_the_estimate_commands_memory_model():
    """One memory model: at no checkpointing and at every layer the plan's figure is `tunekit
    estimate`'s total plus the runtime headroom; in between, the per-layer formula by hand."""
    config = named_config("llama-3.1-8b")
    recipe = _shape_recipe(batch_size=4)
    shapes = count_shapes(config, recipe)
    lora = memory_by_mode(config, shapes, recipe)["lora"]
    estimate = fastpath.recipe_memory_estimate(recipe, config)
    assert estimate(None) == lora.total + RUNTIME_OVERHEAD_BYTES == 64_169_418_752
    assert estimate(1) == lora.total_with_checkpointing + RUNTIME_OVERHEAD_BYTES == 23_612_334_080
    # Every 4th of 32 layers: the inputs of 8 layers, the full activations of 24, one recomputed.
    tokens, h, kv, i, layers = 4 * 2048, 4096, 1024, 14336, 32
    per_layer = 6 * h + 2 * kv + 4 * i + shapes.lora_activation_elems // layers
    # No dropout copies: only A's rank-r output per adapted layer (q k v o gate up down).
    assert shapes.lora_activation_elems == layers * 7 * recipe.train.lora.r == 3584
    fixed = lora.weights + lora.trainable_state + lora.lm_head + RUNTIME_OVERHEAD_BYTES
    assert estimate(4) == fixed + 2 * tokens * (8 * h + (24 + 1) * per_layer)


def test_lora_dropout_and_batch_size_raise_the_estimate():
    base = _estimate("llama-3.2-1b", batch_size=4)(None)
    dropout = _estimate("llama-3.2-1b", batch_size=4, lora={"dropout": 0.1})(None)
    bigger = _estimate("llama-3.2-1b", batch_size=8)(None)
    assert base < dropout and base < bigger
    qlora = _estimate(batch_size=4, adapter="qlora")
    lora = _estimate(batch_size=4)
    # NF4 weights: about 1.5 bytes fewer per decoder weight than bf16's 2, > 8 GiB saved on 8B.
    assert lora(None) - qlora(None) > 8 * GIB


def test_recipe_switches_turn_each_part_off():
    plan = _plan(
        batch_size=4,
        gradient_checkpointing=True,
        fast={"liger": False, "bf16": False, "optimizer": "adamw_torch", "auto_checkpointing": False, "padding_free": False},
    )
    assert not plan.on("liger") and plan.switches["liger"].reason == "train.fast.liger is false"
    assert not plan.on("bf16") and not plan.on("fused_adamw")
    assert plan.checkpoint_every_n_layers == 1  # train.gradient_checkpointing as written
    args = training_args(plan)
    assert args["optim"] == "adamw_torch" and args["bf16"] is False and args["use_liger_kernel"] is False
    assert args["gradient_checkpointing"] is True

    off = _plan(batch_size=4, fast={"enabled": False})
    assert off.enabled is False and training_args(off) == {}

    compiled = _plan(batch_size=4, fast={"torch_compile": True})
    assert training_args(compiled)["torch_compile"] is True


def test_liger_needs_the_package_and_a_supported_architecture():
    without = DeviceInfo(kind="cuda", total_memory=80 * GIB, bf16=True, liger_available=False)
    assert "not installed" in _plan(without, batch_size=1).switches["liger"].reason
    config = named_config("llama-3.2-1b")
    config.model_type = "gpt_bigcode"  # an architecture liger-kernel does not patch
    plan = _plan(shape="llama-3.2-1b", seq_len=512, config=config, batch_size=1)
    assert not plan.on("liger") and "gpt_bigcode" in plan.switches["liger"].reason


def test_padding_free_only_with_a_varlen_attention_kernel():
    small = {"shape": "llama-3.2-1b", "seq_len": 1024}
    assert not _plan(**small, attn_implementation="sdpa").on("padding_free")
    flash = _plan(**small, attn_implementation="flash_attention_2")
    assert flash.on("padding_free")
    assert training_args(flash)["padding_free"] is True and training_args(flash)["max_length"] is None
    packed = _plan(**small, attn_implementation="flash_attention_2", packing=True)
    assert not packed.on("padding_free") and "packing" in packed.switches["padding_free"].reason


def test_paged_optimizer_needs_bitsandbytes():
    with pytest.raises(RecipeError, match="bitsandbytes"):
        _plan(batch_size=1, fast={"optimizer": "paged_adamw_8bit"})
    with_bnb = DeviceInfo(kind="cuda", total_memory=80 * GIB, bf16=True, liger_available=True, bitsandbytes_available=True)
    plan = _plan(with_bnb, batch_size=1, adapter="qlora", fast={"optimizer": "paged_adamw_8bit"})
    assert training_args(plan)["optim"] == "paged_adamw_8bit"
    assert plan.on("bf16_frozen_embeddings")


def test_qlora_plan_recasts_upcast_frozen_embeddings_to_bf16(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    plan = _plan(batch_size=1, adapter="qlora")
    fastpath.apply_to_model(model, plan)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.float32  # small norms stay fp32
    # LoRA plans leave the model alone.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fastpath.apply_to_model(model, _plan(batch_size=1))
    assert model.get_input_embeddings().weight.dtype == torch.float32


def _recipe(tmp_path, tiny_model_dir, **train):
    return parse_recipe(
        {
            "base_model": str(tiny_model_dir),
            "data": {"train": "train.jsonl", "max_length": 64},
            "train": {"batch_size": 3, "max_steps": 1, "logging_steps": 1, **train},
            "output_dir": "runs",
            "name": "fast",
        },
        base_dir=tmp_path,
    )


def _rows():
    from datasets import Dataset

    lengths = (9, 23, 16)
    rows = [[(7 * i + 3 * k) % 400 + 5 for k in range(n)] for i, n in enumerate(lengths)]
    masks = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return Dataset.from_dict({"input_ids": rows, "assistant_masks": masks})


def test_cpu_trainer_runs_the_plain_path(tmp_path, tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunekit.runs import RunPaths
    from tunekit.train.sft import make_trainer, sft_args

    recipe = _recipe(tmp_path, tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer, details = make_trainer(recipe, RunPaths(recipe.run_dir), model, smol_tokenizer, _rows())
    assert details["fast_path"]["device"] == "cpu" and details["fast_path"]["enabled"] is False
    args = trainer.args
    assert (args.bf16, args.use_liger_kernel, args.torch_compile) == (False, False, False)
    assert args.padding_free is details["cpu_padding_free"]["on"]  # decided for CPUs by tunekit.train.cpupath
    plain = sft_args(recipe, RunPaths(recipe.run_dir), has_val=False)
    assert args.optim == plain.optim and args.gradient_checkpointing is False is plain.gradient_checkpointing


@torch.no_grad()
def test_padding_free_batch_scores_the_same_loss_as_a_padded_one(tmp_path, tiny_model_dir, smol_tokenizer):
    """The switch the fast path turns on with varlen attention: on the tiny model (SDPA on CPU,
    transformers' block-diagonal mask from position_ids) packed and padded losses agree."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from tunekit.runs import RunPaths
    from tunekit.train.modeling import peft_config
    from tunekit.train.sft import sft_args

    recipe = _recipe(tmp_path, tiny_model_dir)
    losses = {}
    for padding_free in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = SFTTrainer(
            model=model,
            args=sft_args(recipe, RunPaths(recipe.run_dir), has_val=False, padding_free=padding_free, max_length=None),
            train_dataset=_rows(),
            processing_class=smol_tokenizer,
            peft_config=peft_config(recipe),
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
        assert ("attention_mask" in batch) is (not padding_free)
        trainer.model.eval()
        losses[padding_free] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_planned_gpu_switches_reach_the_trainer_and_keep_the_losses(tmp_path, tiny_model_dir, smol_tokenizer, monkeypatch):
    """Item 4 on CPU as far as CPU goes: a plan made for a (simulated) GPU whose memory budget
    forces activation checkpointing trains 20 steps on one fixed batch with the same losses as
    the plain path. (Liger and bf16 need the GPU: bench/train_throughput.py --check-loss.)"""
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    from tunekit.runs import RunPaths
    from tunekit.train.sft import make_trainer

    class LossLog(TrainerCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    simulated = DeviceInfo(kind="cuda", name="simulated GPU", total_memory=80 * GIB, bf16=False, liger_available=False)
    monkeypatch.setattr(DeviceInfo, "probe", classmethod(lambda cls: simulated))
    config = AutoConfig.from_pretrained(tiny_model_dir)
    every_layer = fastpath.recipe_memory_estimate(_recipe(tmp_path, tiny_model_dir), config)(1)
    losses = {}
    for enabled in (False, True):
        recipe = _recipe(
            tmp_path, tiny_model_dir, max_steps=20, learning_rate=2e-3, lr_scheduler="constant", warmup_ratio=0.0,
            fast={"enabled": enabled, "memory_budget_gib": every_layer / GIB},
        )  # fmt: skip
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        log = LossLog()
        trainer, details = make_trainer(recipe, RunPaths(recipe.run_dir), model, smol_tokenizer, _rows(), callbacks=[log])
        trainer.train()
        losses[enabled] = log.losses
        plan = details["fast_path"]
        layers = trainer.model.get_base_model().model.layers
        if enabled:
            assert plan["enabled"] and plan["checkpoint_every_n_layers"] == 1
            assert plan["memory_estimate_source"] == "tunekit.train.memory"
            assert trainer.args.optim == "adamw_torch_fused"
            assert all(layer.gradient_checkpointing for layer in layers)
        else:
            assert not plan["enabled"] and not any(layer.gradient_checkpointing for layer in layers)
    assert len(losses[True]) == len(losses[False]) == 20
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] < losses[True][0] - 0.5  # it trained on the fixed batch
