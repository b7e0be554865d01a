"""The eval tests' support tickets and the run directory built from them (the `run_dir` fixture of
tests/conftest.py), shared by the eval, registry and judge tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunekit.runs import RunPaths, write_jsonl

REF = '{"category": "billing", "priority": "high"}'
SYSTEM = "Reply with a JSON object with keys category and priority."
TICKETS = [
    ("Hi, my card was charged twice.", REF),
    ("The parcel never came and the tracking page is stuck since Monday, please help.", '{"category": "shipping", "priority": "low"}'),
    ("App crashes.", '{"category": "technical", "priority": "urgent"}'),
    ("I cannot log in to my account any more after I changed my phone number last week.", '{"category": "account", "priority": "medium"}'),
    ("Refund please.", "not json at all"),
]
MAX_NEW = 6


def write_eval_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A run directory as `data prepare` + `train` leave it: recipe, test split, LoRA adapter + tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("", encoding="utf-8")
    recipe = {
        "name": "ev",
        "base_model": str(tiny_model_dir),
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(train_file)},
        "eval": {"max_new_tokens": MAX_NEW, "batch_size": 4},
    }
    run = RunPaths(tmp_path / "runs" / "ev")
    run.root.mkdir(parents=True)
    run.recipe.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ],
            "meta": {"source": "test.jsonl", "line": i},
        }
        for i, (user, answer) in enumerate(TICKETS, start=1)
    ]
    write_jsonl(run.split("test"), rows)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # Random (not zero) B matrices, so the adapter really changes what the model says.
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(run.adapter_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run.adapter_dir)
    return run.root
