"""A run directory as training leaves it (recipe, prepared splits, a random LoRA adapter), shared
by the export tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tunekit.config import load_recipe
from tunekit.runs import RunPaths, write_jsonl

LORA_R, LORA_ALPHA = 4, 8
PROMPTS = [
    "Ticket 1: my order has not arrived.",
    "Ticket 2: the parcel was damaged.",
    "What is two plus two?",
    "Write one word.",
]


def chat_row(user: str, answer: str = '{"category": "shipping"}') -> dict:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "meta": {"source": "train.jsonl", "line": 1}}


def make_run(
    root: Path, model_dir: Path, *, target_modules="all-linear", seed: int = 1, overrides=None, test_split=True, use_dora=False
):
    """A run directory as training leaves it: resolved recipe, prepared splits, adapter + tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_jsonl(root / "train.jsonl", [chat_row(p) for p in PROMPTS])
    (root / "recipe.yaml").write_text(
        f"name: exp\nbase_model: {model_dir}\noutput_dir: {root / 'runs'}\ndata:\n  train: train.jsonl\n"
        f"train:\n  lora:\n    r: {LORA_R}\n    alpha: {LORA_ALPHA}\n",
        encoding="utf-8",
    )
    recipe = load_recipe(root / "recipe.yaml", overrides or [])
    run = RunPaths(recipe.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    if test_split:
        write_jsonl(run.split("test"), [chat_row(p) for p in PROMPTS[:3]])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=target_modules, init_lora_weights=False, use_dora=use_dora
    )
    get_peft_model(model, config).save_pretrained(run.adapter_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run.adapter_dir)
    return recipe, run
