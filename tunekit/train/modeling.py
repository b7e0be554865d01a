"""The model a method trains: plain, 4-bit for QLoRA, and the PEFT config of each adapter kind."""

from __future__ import annotations

import json
from pathlib import Path

from tunekit.config import Recipe
from tunekit.errors import ModelError
from tunekit.models import load_model
from tunekit.models.loading import load_tokenizer_with_template
from tunekit.models.templates import resize_for_tokenizer

QLORA_HINT = "on this machine use train.adapter: lora (or dora)"


def check_adapter_supported(recipe: Recipe) -> None:
    """Fail before any data or weights are read when the machine cannot train this adapter kind."""
    if recipe.train.adapter != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelError(
            "train.adapter: qlora needs a CUDA GPU with bitsandbytes (4-bit NF4 weights), and this machine has no CUDA GPU",
            hint=QLORA_HINT,
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError(
            "train.adapter: qlora needs the bitsandbytes package, which is not installed",
            hint="pip install 'tunekit[gpu]', or use train.adapter: lora",
        ) from None


def training_tokenizer(recipe: Recipe, model_path: str):
    """(tokenizer with the recipe's chat template, ids of the tokens the template added)."""
    return load_tokenizer_with_template(
        model_path, trust_remote_code=recipe.trust_remote_code, chat_template=recipe.chat_template
    )


def load_training_model(recipe: Recipe, model_path: str, tokenizer=None):
    """The base model in the precision the adapter kind trains it in, with a row for every token of
    `tokenizer` (the chat template may have added some)."""
    if recipe.train.adapter == "qlora":
        model = _load_4bit(recipe, model_path)
    else:
        model = load_model(model_path, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    if tokenizer is not None:
        resize_for_tokenizer(model, tokenizer)
        if recipe.chat_template is not None:
            _align_special_tokens(model, tokenizer)
    return model


def _align_special_tokens(model, tokenizer) -> None:
    """The model's configs take the eos/bos/pad the recipe's template set on the tokenizer.

    The trainer would do the same at start-up, with a warning on the user's screen about tokens
    "that differ"; here the difference is the recipe's choice, so it is made without one."""
    from transformers.trainer_utils import align_special_tokens
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        align_special_tokens(model, tokenizer)
    finally:
        logging.set_verbosity(level)


def _load_4bit(recipe: Recipe, model_path: str):
    """QLoRA: NF4 weights with double quantisation, bf16 compute, prepared for k-bit training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            quantization_config=quantization,
            dtype=torch.bfloat16,
            device_map={"": torch.cuda.current_device()},
            trust_remote_code=recipe.trust_remote_code,
            use_safetensors=None if recipe.allow_pickle else True,
        )
    except OSError as exc:
        raise ModelError(f"cannot load model '{model_path}' in 4-bit: {exc}") from None
    # Casts norms to fp32 and enables input gradients so LoRA trains stably on the frozen 4-bit base.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)


def embedding_modules(model, token_ids: list[int] | None) -> list[str] | None:
    """The embedding modules trained whole because the chat template added tokens (None: it added none).

    Why `modules_to_save` and not PEFT's `trainable_token_indices` (which the installed peft has,
    and which would train only the new rows): TRL's SFTTrainer computes the loss with a fused LM
    head that multiplies the hidden states by `lm_head.weight` directly, so trainable token rows
    on the output side are bypassed (the new tokens' output rows would never learn, and the wrapper
    breaks the fused head outright). A `modules_to_save` copy *is* the weight it reads. The cost is
    two vocab x hidden matrices in the adapter; with tied embeddings the copies stay tied
    (`ensure_weight_tying`), as in the base model."""
    if not token_ids:
        return None
    names = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    return [names[id(layer)] for layer in layers if layer is not None and id(layer) in names]


def peft_config(recipe: Recipe, model=None, new_token_ids: list[int] | None = None):
    """The PEFT LoraConfig of the recipe's adapter kind (training the rows of `new_token_ids` of
    `model` too); None for full fine-tuning, which trains every row anyway."""
    from peft import LoraConfig

    adapter = recipe.train.adapter
    if adapter == "full":
        return None
    lora = recipe.train.lora
    embeddings = embedding_modules(model, new_token_ids) if model is not None else None
    return LoraConfig(
        modules_to_save=embeddings,
        ensure_weight_tying=bool(embeddings),
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=adapter == "dora",
        use_rslora=adapter == "rslora",
    )


def adapter_details(recipe: Recipe, output_dir: Path) -> dict:
    """How the trained weights were set up, for the manifest: read back from the saved adapter, so
    an adapter continued from an earlier run (DPO init_from) is described as it really is."""
    adapter = recipe.train.adapter
    if adapter == "full":
        return {"kind": "full", "trains": "every weight"}
    config = json.loads((output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = config.get("r"), config.get("lora_alpha")
    rslora = bool(config.get("use_rslora"))
    targets = config.get("target_modules")
    details = {
        "kind": adapter,
        "r": r,
        "alpha": alpha,
        "dropout": config.get("lora_dropout"),
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": rslora,
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "scale": alpha / (r**0.5 if rslora else r) if r and alpha else None,
    }
    if adapter == "qlora":
        details["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    return details
