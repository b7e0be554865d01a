"""The model a method trains: plain, 4-bit for QLoRA, and the PEFT config of each adapter kind."""

from __future__ import annotations

import json
from pathlib import Path

from tunekit.config import Recipe
from tunekit.errors import ModelError
from tunekit.models import load_model

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


def load_training_model(recipe: Recipe, model_path: str):
    """The base model in the precision the adapter kind trains it in."""
    if recipe.train.adapter == "qlora":
        return _load_4bit(recipe, model_path)
    return load_model(model_path, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)


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


def peft_config(recipe: Recipe):
    """The PEFT LoraConfig of the recipe's adapter kind; None for full fine-tuning."""
    from peft import LoraConfig

    adapter = recipe.train.adapter
    if adapter == "full":
        return None
    lora = recipe.train.lora
    return LoraConfig(
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
