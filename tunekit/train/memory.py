"""The GPU memory of a training run, one model for `tunekit estimate` and the CUDA fast path.

Memory model, in bytes. P = all parameters, T = trainable adapter parameters, b = batch_size
(×2 for DPO: chosen and rejected), s = data.max_length (every sequence padded to it, the worst
case), L = layers, h = hidden size, i = MLP intermediate size, d_kv = key/value heads × head_dim,
V = vocabulary size:

- weights: full and LoRA 2·P (bf16). QLoRA: the weights of the decoder's linear layers in NF4
  with double quantization, 4 + 8/64 + 32/(64·256) ≈ 4.127 bits each (4-bit codes, an 8-bit
  absmax per 64-weight block, an fp32 scale per 256 blocks); embeddings, lm_head, norms and biases
  stay bf16.
- trainable state: LoRA/QLoRA 16·T (fp32 adapter weights 4, gradients 4, AdamW moments 8).
  Full fine-tuning in bf16 mixed precision 14·P (bf16 gradients 2, fp32 master weights 4, AdamW
  moments 8), on top of the 2·P bf16 weights: 16 bytes per parameter in all. With an 8-bit
  optimizer (`train.fast.optimizer: paged_adamw_8bit`) the moments take 2 bytes instead of 8.
- activations kept for backward, bf16, per token and layer: 6h + 2·d_kv + 4i elements (norm
  inputs and outputs 4h; the roped query, key, value and the attention output 2h + 2·d_kv; gate,
  up, SiLU(gate) and their product 4i). Attention is assumed to run through SDPA/flash attention,
  so no s×s score matrix is stored. LoRA adds, per adapted linear layer, its dropped-out input
  (in_features, when dropout > 0) and the rank-r output of A. Without gradient checkpointing:
  2·b·s·(L·per_layer + lora_extra). With it, only each layer's input is kept and one layer is
  recomputed at a time: 2·b·s·(L·h + per_layer + lora_extra / L). Checkpointing every n-th layer
  (the CUDA fast path's plan) keeps the inputs of the c = ⌈L/n⌉ checkpointed layers and the full
  activations of the other L - c, plus one recomputed layer: 2·b·s·(c·h + (L - c + 1)·layer),
  layer = per_layer + lora_extra / L. Liger's kernels save a little of this (no fp32 norm copy, no
  separate SiLU output); that saving is not counted, so a plan with Liger errs toward checkpointing.
- LM head: TRL's SFT and DPO trainers (which every tunekit method runs on) score the LM head in
  tiles of 4096 tokens × 32768 vocabulary entries and never hold the b·s×V logits. Counted: two
  bf16 tiles (forward, and the recomputed one in backward), the fp32 gradient of the final hidden
  states b·s·h·4, per-token fp32 statistics b·s·7·4, and for full fine-tuning the fp32 gradient
  accumulator of the head V·h·4. For comparison `logits_unfused` is what a plain forward would
  need: b·s·V·8 (fp32 logits plus their gradient; 8.4 GB at 8×1024 tokens and a 128k vocabulary).
- DPO needs no reference copy: with adapters the reference is the base with the adapter switched
  off, and full fine-tuning precomputes the reference log-probabilities (tunekit.train.dpo).

Not modelled: the CUDA context (about 0.5 GB), allocator fragmentation, DoRA's transient copy of
each adapted weight, and the cross-entropy's temporary buffers. Treat totals as a lower bound and
keep 10-20 % headroom.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunekit.config import Recipe

MODES = ("full", "lora", "qlora")
NF4_DOUBLE_QUANT_BITS = 4 + 8 / 64 + 32 / (64 * 256)
BF16 = 2
# Tile of TRL's chunked LM head (trl.kernels.chunked_logprob: TOKEN_CHUNK_SIZE x the trainer's chunk_size).
LM_HEAD_TOKEN_TILE, LM_HEAD_VOCAB_TILE = 4096, 32768


def memory_mode(adapter: str) -> str:
    """The memory column of a train.adapter (DoRA and rsLoRA are LoRA variants)."""
    return adapter if adapter in MODES else "lora"


@dataclass
class Memory:
    """Estimated peak GPU memory of one training mode, in bytes."""

    weights: int
    trainable_state: int  # gradients + optimizer states (+ fp32 master weights for full FT)
    activations_no_checkpointing: int
    activations_checkpointing: int
    lm_head: int  # TRL's chunked LM head: tiles and fp32 gradients, never the full logits
    gradient_checkpointing: bool  # which activation figure the total uses (the recipe's setting)

    @property
    def activations(self) -> int:
        return self.activations_checkpointing if self.gradient_checkpointing else self.activations_no_checkpointing

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.lm_head

    @property
    def total_with_checkpointing(self) -> int:
        return self.total - self.activations + self.activations_checkpointing

    def to_dict(self) -> dict:
        return {**asdict(self), "activations": self.activations, "total": self.total,
                "total_with_checkpointing": self.total_with_checkpointing}


@dataclass
class ModelShapes:
    """Exact parameter counts of a model with the recipe's adapter (tunekit.train.estimate.count_shapes)."""

    total: int
    adapter: int  # trainable parameters of the recipe's LoRA settings
    quantizable: int  # weights of linear layers QLoRA stores in 4 bit
    lora_activation_elems: int  # per token, all layers: see the module docstring


def model_dims(config) -> dict[str, int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return {
        "layers": text.num_hidden_layers,
        "hidden": h,
        "intermediate": getattr(text, "intermediate_size", None) or 4 * h,
        "kv": kv_heads * head_dim,
        "vocab": text.vocab_size,
    }


def tokens_per_batch(recipe: Recipe) -> int:
    sequences = recipe.train.batch_size * (2 if recipe.train.method == "dpo" else 1)  # DPO: chosen + rejected
    return sequences * recipe.data.max_length


def unfused_logits_bytes(config, recipe: Recipe) -> int:
    return tokens_per_batch(recipe) * model_dims(config)["vocab"] * 8


def memory_by_mode(config, shapes: ModelShapes, recipe: Recipe) -> dict[str, Memory]:
    """Full / LoRA / QLoRA memory at the recipe's batch size and max_length (see module docstring)."""
    d = model_dims(config)
    tokens = tokens_per_batch(recipe)
    tile = BF16 * min(tokens, LM_HEAD_TOKEN_TILE) * min(d["vocab"], LM_HEAD_VOCAB_TILE)
    lm_head = 2 * tile + 4 * tokens * d["hidden"] + 4 * 7 * tokens
    head_grad = 4 * d["vocab"] * d["hidden"]
    checkpointing = recipe.train.gradient_checkpointing

    def activations(lora_elems: int) -> tuple[int, int]:
        return activation_bytes(d, tokens, lora_elems, None), activation_bytes(d, tokens, lora_elems, 1)

    full_act, full_ckpt = activations(0)
    lora_act, lora_ckpt = activations(shapes.lora_activation_elems)
    dense = BF16 * shapes.total
    nf4 = math.ceil(shapes.quantizable * NF4_DOUBLE_QUANT_BITS / 8) + BF16 * (shapes.total - shapes.quantizable)
    optimizer = getattr(getattr(recipe.train, "fast", None), "optimizer", "")
    moments = 2 if "8bit" in optimizer else 8  # AdamW's two moments per trainable parameter
    adapter_state = (4 + 4 + moments) * shapes.adapter
    return {
        "full": Memory(dense, (2 + 4 + moments) * shapes.total, full_act, full_ckpt, lm_head + head_grad, checkpointing),
        "lora": Memory(dense, adapter_state, lora_act, lora_ckpt, lm_head, checkpointing),
        "qlora": Memory(nf4, adapter_state, lora_act, lora_ckpt, lm_head, checkpointing),
    }


def activation_bytes(dims: dict[str, int], tokens: int, lora_elems: int, every_n: int | None) -> int:
    """Activations kept for backward with checkpointing on every n-th layer (None: none; 1: every layer)."""
    layers, hidden = dims["layers"], dims["hidden"]
    per_layer = 6 * hidden + 2 * dims["kv"] + 4 * dims["intermediate"]
    if every_n is None:
        return BF16 * tokens * (layers * per_layer + lora_elems)
    checkpointed = -(-layers // every_n)
    lora_per_layer = lora_elems // max(layers, 1)
    kept = checkpointed * hidden + (layers - checkpointed + 1) * (per_layer + lora_per_layer)
    return BF16 * tokens * kept


def peak_bytes_by_checkpointing(config, shapes: ModelShapes, recipe: Recipe):
    """A function every_n -> peak bytes of the recipe's mode with checkpointing on every n-th layer
    (None: none). At None and 1 it equals memory_by_mode's totals without and with checkpointing."""
    memory = memory_by_mode(config, shapes, recipe)[memory_mode(recipe.train.adapter)]
    fixed = memory.weights + memory.trainable_state + memory.lm_head
    dims, tokens = model_dims(config), tokens_per_batch(recipe)
    lora_elems = 0 if recipe.train.adapter == "full" else shapes.lora_activation_elems

    def total(every_n: int | None) -> int:
        return fixed + activation_bytes(dims, tokens, lora_elems, every_n)

    return total


def parameter_counts(model_config) -> tuple[int, int, int]:
    """(decoder-layer matmul weights, input embedding, LM head) of a Llama-style config, for FLOP
    counts; a tied head shares the embedding matrix, so it counts once (as the embedding)."""
    h = model_config.hidden_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or h // heads
    q = heads * head_dim
    kv = model_config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * model_config.intermediate_size
    embed = model_config.vocab_size * h
    head = 0 if getattr(model_config, "tie_word_embeddings", False) else embed
    return model_config.num_hidden_layers * per_layer, embed, head
