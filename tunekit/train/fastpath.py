"""The CUDA fast path: which speed switches a training run uses, and why.

`plan_fast_path` turns the recipe (its `train.fast` section), the model's shape and the device into a
`FastPathPlan`: one entry per switch (on/off and the reason), written to the run manifest.
`training_args(plan)` gives the trainer arguments that carry it out; `apply_to_model` does what
must touch the model itself. On CPU every switch is off and training runs exactly as before.

Rules (CUDA):
- Liger kernels (RMSNorm, SwiGLU, RoPE) when liger-kernel is installed and supports the
  architecture. Its fused linear cross-entropy is NOT used: TRL's SFTTrainer already scores the
  LM head in chunks (`add_fused_lm_head`), so the (tokens × vocab) fp32 logits never exist.
- Activation checkpointing from the memory estimate (tunekit.train.memory, the model `tunekit
  estimate` prints, plus runtime headroom): off when everything fits in the budget, else every
  n-th layer for the largest n that fits, else every layer.
- Fused AdamW, bf16 autocast, padding-free batches only where the attention kernel keeps packed
  examples apart without a dense mask (flash / flex attention), torch.compile only when asked.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field

GIB = 1024**3
# Kernels that attend within each packed example from position_ids alone; SDPA would need a dense
# (tokens × tokens) mask over the whole packed row, which costs more than the padding it saves.
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3", "flex_attention"}
# Headroom the plan leaves for the CUDA context, cuBLAS workspaces and allocator fragmentation.
RUNTIME_OVERHEAD_BYTES = int(2.5 * GIB)


@dataclass
class DeviceInfo:
    """What the plan needs to know about the device; `probe()` reads it, tests build it by hand."""

    kind: str  # "cuda" or "cpu"
    name: str = "cpu"
    total_memory: int = 0
    bf16: bool = False
    liger_available: bool = False
    bitsandbytes_available: bool = False

    @classmethod
    def probe(cls) -> "DeviceInfo":
        import torch

        if not torch.cuda.is_available():
            return cls(kind="cpu")
        props = torch.cuda.get_device_properties(0)
        return cls(
            kind="cuda",
            name=props.name,
            total_memory=props.total_memory,
            bf16=torch.cuda.is_bf16_supported(),
            liger_available=importlib.util.find_spec("liger_kernel") is not None,
            bitsandbytes_available=importlib.util.find_spec("bitsandbytes") is not None,
        )


@dataclass
class Switch:
    on: bool
    reason: str


@dataclass
class FastPathPlan:
    device: str
    enabled: bool = True  # False: the plain path (CPU, or train.fast.enabled false)
    switches: dict[str, Switch] = field(default_factory=dict)
    optimizer: str = "adamw_torch"
    checkpoint_every_n_layers: int | None = None  # None: no checkpointing; 1: every layer
    memory: dict = field(default_factory=dict)
    memory_source: str = ""

    def on(self, name: str) -> bool:
        return name in self.switches and self.switches[name].on

    def to_manifest(self) -> dict:
        return {
            "device": self.device,
            "enabled": self.enabled,
            "optimizer": self.optimizer,
            "checkpoint_every_n_layers": self.checkpoint_every_n_layers,
            "switches": {name: asdict(sw) for name, sw in self.switches.items()},
            "memory_estimate_gib": {k: round(v / GIB, 2) for k, v in self.memory.items()},
            "memory_estimate_source": self.memory_source,
        }


# Architectures liger-kernel 0.8 patches; used only where liger-kernel cannot be imported (a plan
# made for a GPU from a machine without one). Where it is installed, its own table decides.
LIGER_FAMILIES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi3", "granite", "olmo2"})


def liger_supports(model_type: str) -> bool:
    """Whether liger-kernel has an instance patch for this architecture."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return model_type in LIGER_FAMILIES
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def plan_for(recipe, model) -> FastPathPlan:
    """The plan for training `model` (already loaded) with `recipe` on this machine's device."""
    config = model.config
    attn = getattr(config, "_attn_implementation", None) or "sdpa"
    return plan_fast_path(recipe, config, DeviceInfo.probe(), attn_implementation=attn)


def recipe_memory_estimate(recipe, model_config):
    """every_n -> peak bytes (None: no checkpointing): tunekit.train.memory's model, with exact
    adapter shapes from a meta-device model, plus the runtime headroom the plan keeps."""
    from tunekit.train.estimate import count_shapes
    from tunekit.train.memory import peak_bytes_by_checkpointing

    peak = peak_bytes_by_checkpointing(model_config, count_shapes(model_config, recipe), recipe)

    def total(every_n: int | None) -> int:
        return peak(every_n) + RUNTIME_OVERHEAD_BYTES

    return total


def plan_fast_path(recipe, model_config, device: DeviceInfo, *, attn_implementation: str = "sdpa") -> FastPathPlan:
    """Decide every switch for `recipe` on `device`; see the module docstring."""
    train = recipe.train
    if device.kind != "cuda" or not train.fast.enabled:
        return _plain_plan(train, device)
    fast = train.fast
    plan = FastPathPlan(device=device.kind)
    plan.switches["liger"] = _liger_switch(fast, device, getattr(model_config, "model_type", "?"))
    plan.switches["chunked_loss"] = Switch(True, "TRL scores the LM head in chunks; full fp32 logits never materialise")
    plan.switches["padding_free"] = _padding_free_switch(train, attn_implementation)
    if train.adapter == "qlora":
        plan.switches["bf16"] = Switch(True, "QLoRA computes in bf16 by design")
        plan.switches["bf16_frozen_embeddings"] = Switch(
            fast.bf16, "QLoRA: keep the frozen embedding and LM head in bf16 (k-bit preparation upcasts them to fp32)"
            if fast.bf16 else "train.fast.bf16 is false",
        )
    else:
        why = "on" if device.bf16 else "this GPU lacks bf16"
        plan.switches["bf16"] = Switch(fast.bf16 and device.bf16, why if fast.bf16 else "train.fast.bf16 is false")
    plan.optimizer = _optimizer(fast.optimizer, device)
    plan.switches["fused_adamw"] = Switch(plan.optimizer == "adamw_torch_fused", f"optimizer {plan.optimizer}")
    plan.switches["torch_compile"] = Switch(fast.torch_compile, "asked for" if fast.torch_compile else "off unless asked (compile time)")
    _plan_checkpointing(plan, recipe, model_config, device)
    return plan


def _plain_plan(train, device: DeviceInfo) -> FastPathPlan:
    """CPU, or `train.fast.enabled: false`: nothing changes; the plan only records that."""
    why = "CPU: training runs unchanged" if device.kind != "cuda" else "train.fast.enabled is false: plain path"
    plan = FastPathPlan(device=device.kind, enabled=False, checkpoint_every_n_layers=1 if train.gradient_checkpointing else None)
    for name in ("liger", "padding_free", "fused_adamw", "bf16", "torch_compile"):
        plan.switches[name] = Switch(False, why)
    if device.kind == "cuda":
        plan.switches["bf16"] = Switch(device.bf16 or train.adapter == "qlora", why + " (bf16 where the GPU supports it)")
    plan.switches["activation_checkpointing"] = Switch(train.gradient_checkpointing, why + "; train.gradient_checkpointing as written")
    return plan


def _liger_switch(fast, device: DeviceInfo, model_type: str) -> Switch:
    if not fast.liger:
        return Switch(False, "train.fast.liger is false")
    if not device.liger_available:
        return Switch(False, "liger-kernel is not installed (pip install 'tunekit[gpu]')")
    if not liger_supports(model_type):
        return Switch(False, f"liger-kernel has no kernels for {model_type!r}")
    return Switch(True, f"RMSNorm, SwiGLU and RoPE kernels for {model_type}")


def _padding_free_switch(train, attn_implementation: str) -> Switch:
    if not train.fast.padding_free:
        return Switch(False, "train.fast.padding_free is false")
    if getattr(train, "packing", False):
        return Switch(False, "train.packing already lays packed examples out padding-free")
    if attn_implementation not in VARLEN_ATTENTION:
        return Switch(
            False, f"{attn_implementation} attention would need a dense mask over the packed row; padded batches are cheaper"
        )
    return Switch(True, f"{attn_implementation} keeps packed examples apart")


def _optimizer(choice: str, device: DeviceInfo) -> str:
    if choice.startswith("paged") and not device.bitsandbytes_available:
        from tunekit.errors import RecipeError

        raise RecipeError("train.fast.optimizer", [f"{choice} needs bitsandbytes: pip install 'tunekit[gpu]'"])
    return "adamw_torch_fused" if choice == "auto" else choice


def _plan_checkpointing(plan: FastPathPlan, recipe, model_config, device: DeviceInfo) -> None:
    train = recipe.train
    fast = train.fast
    if not fast.auto_checkpointing:
        plan.checkpoint_every_n_layers = 1 if train.gradient_checkpointing else None
        plan.switches["activation_checkpointing"] = Switch(
            train.gradient_checkpointing, "train.fast.auto_checkpointing is false: train.gradient_checkpointing as written"
        )
        return
    budget = int(fast.memory_budget_gib * GIB) if fast.memory_budget_gib else int(fast.memory_fraction * device.total_memory)
    estimate = recipe_memory_estimate(recipe, model_config)
    plan.memory_source = "tunekit.train.memory"
    n_layers = model_config.num_hidden_layers
    plan.memory = {"budget": budget}
    for every_n in [None, *range(n_layers, 0, -1)]:  # cheapest first: none, then ever more layers
        total = estimate(every_n)
        if total <= budget:
            break
    plan.memory["planned"] = total
    plan.checkpoint_every_n_layers = every_n
    if every_n is None:
        plan.switches["activation_checkpointing"] = Switch(False, f"estimate {total / GIB:.1f} GiB fits the {budget / GIB:.1f} GiB budget")
    else:
        fits = "fits" if total <= budget else "is the least memory it can use, still over"
        plan.switches["activation_checkpointing"] = Switch(
            True, f"every {every_n} layer(s): estimate {total / GIB:.1f} GiB {fits} the {budget / GIB:.1f} GiB budget"
        )


def training_args(plan: FastPathPlan) -> dict:
    """Trainer arguments carrying out `plan` (merged over the recipe's own arguments); none for the
    plain path, so CPU training and `train.fast.enabled: false` run exactly as before."""
    if not plan.enabled:
        return {}
    args = {
        "bf16": plan.on("bf16"),
        "optim": plan.optimizer,
        "torch_compile": plan.on("torch_compile"),
        "padding_free": plan.on("padding_free"),
        "use_liger_kernel": plan.on("liger"),
        "gradient_checkpointing": plan.checkpoint_every_n_layers is not None,
    }
    if plan.on("padding_free"):
        # Rows were already truncated (or dropped) to data.max_length when they were tokenized; TRL
        # refuses a max_length with padding-free batches that are not packed.
        args["max_length"] = None
    if plan.on("liger"):
        # TRL refuses Liger's fused linear cross-entropy (it has its own chunked LM head).
        args["liger_kernel_config"] = {"rms_norm": True, "swiglu": True, "rope": True, "fused_linear_cross_entropy": False}
    if plan.checkpoint_every_n_layers is not None:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False, "every_n_layers": plan.checkpoint_every_n_layers}
    return args


def apply_to_model(model, plan: FastPathPlan) -> None:
    """Model-side parts of the plan, before PEFT wraps the model. (Liger is applied by the trainer,
    `use_liger_kernel`, once PEFT has wrapped it.)"""
    if plan.on("bf16_frozen_embeddings"):
        import torch

        # prepare_model_for_kbit_training casts every non-4-bit weight to fp32; for the frozen
        # 128k-row embedding and LM head of an 8B model that is 2 GiB more for nothing (the LM
        # head runs under bf16 autocast anyway). Norm weights are tiny and stay fp32.
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None and module.weight.dtype == torch.float32 and not module.weight.requires_grad:
                module.to(torch.bfloat16)
    if plan.on("padding_free") and getattr(model.config, "use_cache", False):
        model.config.use_cache = False  # packed rows never use the KV cache in training
