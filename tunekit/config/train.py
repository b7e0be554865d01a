"""The `train` section: method, adapter, hyperparameters, data mixing and the CUDA fast path."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunekit.config.common import RecipePath, Section


class LoraConfig(Section):
    r: int = Field(
        16,
        gt=0,
        description="LoRA rank: the adapter's capacity. 8-16 teaches a format, style or task; 32-64 adds domain knowledge; "
        "above 128 rarely helps and costs memory.",
    )
    alpha: int = Field(
        32,
        gt=0,
        description="LoRA scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with rslora). "
        "About 2 x r is a common start; keep alpha / r fixed when you change r.",
    )
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input: 0.05-0.1 helps small datasets, 0 is fine for large ones."
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules to adapt: `all-linear` (every linear layer but the output head; learns the most) or a "
        "list of module names (e.g. [q_proj, k_proj, v_proj, o_proj]: about a third of the adapter size).",
    )

    @field_validator("target_modules")
    @classmethod
    def _one_name_or_a_list(cls, value: str | list[str]) -> str | list[str]:
        # "q_proj,v_proj" would reach PEFT as one module name and fail there with a message that
        # does not say how a list is written.
        if isinstance(value, str) and ("," in value or " " in value.strip()):
            names = [n.strip() for n in value.replace(",", " ").split() if n.strip()]
            raise ValueError(f"'{value}' is one name; a list is written in YAML: [{', '.join(names)}] (--set train.lora.target_modules=[{','.join(names)}])")
        return value


DpoLossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]  # fmt: skip  (the loss types of TRL 1.16's DPOConfig)


class DpoConfig(Section):
    beta: float = Field(
        0.1, gt=0, description="Strength of the pull towards the reference model (higher: stay closer to it; IPO's tau)."
    )
    loss_type: DpoLossType = Field("sigmoid", description="Preference loss: `sigmoid` is the original DPO; see TRL for the others.")
    init_from: RecipePath | None = Field(
        None,
        description="Start from an earlier run instead of the base model: its run directory, its `adapter/` or its "
        "`model/`. The starting point is also the reference model. Default: the base model.",
    )


class MixConfig(Section):
    file: RecipePath = Field(description="General data mixed into training to limit forgetting (any input format tunekit reads).")
    ratio: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the final training set drawn from `file` (0.2: one row in five).")
    seed: int = Field(42, description="Seed of the random choice of mixed rows.")


class FastConfig(Section):
    """Speed and memory switches: the CUDA fast path (tunekit.train.fastpath) and the CPU path (tunekit.train.cpupath)."""

    enabled: bool = Field(True, description="Use the fast path when training on a CUDA GPU (no effect on CPU).")
    liger: bool = Field(
        True, description="Liger Triton kernels (RMSNorm, SwiGLU, RoPE) on supported architectures (extra: tunekit[gpu])."
    )
    padding_free: bool = Field(
        True,
        description="Concatenate the examples of a batch without padding when the attention kernel keeps them apart "
        "(flash / flex attention); with SDPA it stays off.",
    )
    fold_lora_dropout: bool = Field(
        True,
        description="Off CUDA: compute each LoRA branch's dropout inside its lora_A, keeping a one-byte mask for backward "
        "instead of two fp32 copies of the input (about half the saved activations of an all-linear LoRA).",
    )
    auto_checkpointing: bool = Field(
        True,
        description="Choose activation checkpointing (off, every n-th layer, every layer) from the memory estimate; "
        "false: use `train.gradient_checkpointing` as written.",
    )
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "paged_adamw_8bit"] = Field(
        "auto",
        description="`auto`: fused CUDA AdamW on GPU; `adamw_torch` turns fusion off; `paged_adamw_*` (bitsandbytes) "
        "spill optimizer state to CPU under memory pressure, `_8bit` also quantizes it.",
    )
    cpu_memory_budget_gib: float | None = Field(
        2.5,
        gt=0,
        description="SFT off CUDA: when a step at `train.batch_size` rows is estimated to peak above this much resident "
        "memory, each batch is split into smaller micro-batches accumulated to the same optimizer step (same rows, "
        "same loss; tunekit.train.cpupath); null: never split.",
    )
    bf16: bool = Field(True, description="bf16 mixed precision on GPUs that support it.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile (slow first steps; opt in).")
    memory_fraction: float = Field(
        0.85, gt=0.1, le=1.0, description="Share of GPU memory the checkpointing decision may plan to use."
    )
    memory_budget_gib: float | None = Field(
        None, gt=0, description="Plan for at most this much GPU memory instead (e.g. to fit a smaller card later)."
    )


class TrainConfig(Section):
    method: Literal["sft", "dpo", "cpt"] = Field(
        "sft",
        description="Training objective: `sft` (supervised fine-tuning on chats, loss on assistant turns), `dpo` "
        "(preference pairs prompt/chosen/rejected), `cpt` (continued pre-training on raw `text`, loss on every token).",
    )
    adapter: Literal["lora", "qlora", "dora", "rslora", "full"] = Field(
        "lora",
        description="What is trained: `lora` adapters on a frozen base; `qlora` LoRA on a 4-bit NF4 base (CUDA GPU + "
        "bitsandbytes); `dora` weight-decomposed LoRA; `rslora` rank-stabilised LoRA (scale alpha/sqrt(r)); `full` every weight.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA hyperparameters (lora, qlora, dora, rslora).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="DPO settings (method: dpo).")
    mix: MixConfig | None = Field(None, description="Mix general data into the training set (methods sft and cpt).")
    packing: bool = Field(
        False,
        description="SFT: pack several examples into each `data.max_length` row without padding (attention stays within "
        "each example; assistant-only loss kept). `cpt` always packs; `dpo` never does.",
    )
    epochs: float = Field(
        3.0, gt=0, description="Passes over the training set. 1-3 is usual; more than 5 on under 1k examples tends to memorise them."
    )
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use `epochs`).")
    learning_rate: float = Field(
        2e-4,
        gt=0,
        description="Peak learning rate. LoRA/QLoRA/DoRA: 1e-4 to 2e-4 (above 5e-4 tends to diverge). Full fine-tuning: "
        "1e-5 to 2e-5 (above 5e-5 risks forgetting). DPO: about ten times lower than SFT.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up the learning rate (0.03-0.1 is usual).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per step; the largest that fits in memory (see `tunekit estimate`).")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step. batch_size x this is the effective batch; 16-64 is a common target.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    logging_steps: int = Field(5, gt=0, description="Log loss, learning rate and tokens/s every N steps.")
    eval_steps: int | None = Field(None, gt=0, description="Validate every N steps (default: once per epoch).")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward instead of storing them: several-fold less activation memory for "
        "about 30% more compute. Turn on when `tunekit estimate` says activations do not fit.",
    )
    fast: FastConfig = Field(default_factory=FastConfig, description="CUDA speed switches (Liger, checkpointing plan, fused AdamW...).")
    seed: int = Field(42, description="Seed for weight init of adapters and data order.")
    save_steps: int | None = Field(
        None,
        gt=0,
        description="Save a resumable checkpoint every N optimizer steps (default: at every validation, or every 50 "
        "steps without validation data). Ctrl-C also saves one.",
    )
    save_total_limit: int = Field(
        2, gt=0, description="Keep the newest N checkpoints; the best one by validation loss is kept in addition."
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after N validations in a row without a lower validation loss; the adapter is then the best "
        "checkpoint's. Needs validation data.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Also send metrics to these trackers (extras: tunekit[tracking] for tensorboard, tunekit[mlflow], "
        "tunekit[wandb]). metrics.jsonl and loss.png are always written.",
    )

    @model_validator(mode="after")
    def _checkpoints_fall_on_validations(self) -> "TrainConfig":
        # Early stopping ends on the best checkpoint, so every validation must have a checkpoint.
        if self.early_stopping_patience is None or self.save_steps is None:
            return self
        if self.eval_steps is None:
            raise ValueError("save_steps: with early_stopping_patience, also set eval_steps (save_steps a multiple of it), or leave save_steps unset")
        if self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps: with early_stopping_patience it must be a multiple of eval_steps ({self.eval_steps})")
        return self

    @model_validator(mode="after")
    def _method_options_fit(self) -> "TrainConfig":
        if self.packing and self.method == "dpo":
            raise ValueError("packing: true applies to method sft (cpt always packs; dpo pairs are never packed)")
        if self.mix is not None and self.method == "dpo":
            raise ValueError("mix: mixing in general data applies to methods sft and cpt, not dpo")
        if self.dpo.init_from is not None and self.method != "dpo":
            raise ValueError(f"dpo.init_from: applies to method dpo (method is {self.method})")
        return self


