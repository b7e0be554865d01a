"""One measurement of bench/train_throughput.py, run in its own process.

Each measurement gets a fresh process so that peak-memory figures start clean and so that Liger's
patches (some replace functions of transformers' modeling modules) never leak into the plain
baseline. The parent passes a JSON job and reads one JSON result back.

Paths:
- `baseline`: plain transformers `Trainer` + PEFT, the anchors' settings: SDPA, activation
  checkpointing on every layer, bf16 autocast, transformers' default AdamW (fused in 5.x), the
  model's own loss over full logits.
- `tunekit`: the trainer tunekit itself builds (`tunekit.train.sft.make_trainer`, the same code
  `tunekit train` runs) on the same in-memory model and tokens, with its CUDA fast path.
- `tunekit-plain`: the same with `train.fast.enabled: false` (for the loss check).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

H100_BF16_DENSE_FLOPS = 989e12  # H100 / H200 SXM datasheet dense bf16 rate
CUDA = torch.cuda.is_available()  # False only for a plumbing check on CPU (the `dry-run` workload)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time at the end of every optimizer step (device synchronised), and logged losses."""

    def __init__(self):
        self.start = 0.0
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        _sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def tiny_tokenizer():
    """A tokenizer object for the trainers' padding logic; the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def token_rows(job: dict, vocab_size: int) -> list[list[int]]:
    """Random token ids (never zeros: a real spread of embedding rows and labels)."""
    generator = torch.Generator().manual_seed(job["seed"])
    # A fixed batch: the dataset is one batch, so every step (one epoch each) sees exactly it.
    n_rows = job["batch_size"] * (1 if job.get("fixed_batch") else job["warmup"] + job["steps"])
    return torch.randint(3, vocab_size, (n_rows, job["seq_len"]), generator=generator).tolist()


def model_config(job: dict):
    from tunekit.models.shapes import named_config

    config = named_config(job["shape"])
    if job.get("layers"):
        config.num_hidden_layers = job["layers"]
    return config


def random_model(job: dict):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(job["seed"])
    with torch.device("cuda" if CUDA else "cpu"):
        model = AutoModelForCausalLM.from_config(model_config(job), dtype=torch.bfloat16, attn_implementation="sdpa")
    return model


def save_random_model(job: dict) -> None:
    """Write a random-init model once, for the QLoRA paths that load (and quantize) from disk."""
    model = random_model(job)
    model.save_pretrained(job["weights_dir"])
    tiny_tokenizer().save_pretrained(job["weights_dir"])


def _qlora_baseline_model(job: dict):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        job["weights_dir"], quantization_config=quantization, dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa"
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)


def baseline_trainer(job: dict, timer: StepTimer, out_dir: str):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = _qlora_baseline_model(job) if job["adapter"] == "qlora" else random_model(job)
    rows = token_rows(job, model.config.vocab_size)
    lora = job["lora"]
    torch.manual_seed(job["seed"])
    model = get_peft_model(
        model,
        LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=job["batch_size"],
        max_steps=job["warmup"] + job["steps"],
        learning_rate=job["learning_rate"],
        lr_scheduler_type="constant",
        bf16=CUDA,
        use_cpu=not CUDA,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1 if job.get("log_every_step") else 10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator, callbacks=[timer])
    return trainer, {"path": "transformers Trainer + PEFT", "optim": str(args.optim), "attn": model.config._attn_implementation}


def tunekit_trainer(job: dict, timer: StepTimer, out_dir: str, fast_enabled: bool):
    from datasets import Dataset

    from tunekit.config import parse_recipe
    from tunekit.runs import RunPaths
    from tunekit.train.modeling import load_training_model
    from tunekit.train.sft import make_trainer

    lora = job["lora"]
    recipe = parse_recipe(
        {
            "data": {"train": "synthetic.jsonl", "max_length": job["seq_len"]},
            "train": {
                "adapter": job["adapter"],
                "batch_size": job["batch_size"],
                "max_steps": job["warmup"] + job["steps"],
                "learning_rate": job["learning_rate"],
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "logging_steps": 1 if job.get("log_every_step") else 10_000,
                "lora": {"r": lora["r"], "alpha": lora["alpha"], "dropout": lora["dropout"]},
                "fast": {"enabled": fast_enabled, **job.get("fast", {})},
            },
        }
    )
    model = load_training_model(recipe, job["weights_dir"]) if job["adapter"] == "qlora" else random_model(job)
    rows = token_rows(job, model.config.vocab_size)
    dataset = Dataset.from_dict({"input_ids": rows, "assistant_masks": [[1] * len(r) for r in rows]})
    torch.manual_seed(job["seed"])
    trainer, details = make_trainer(recipe, RunPaths(Path(out_dir)), model, tiny_tokenizer(), dataset, None, callbacks=[timer])
    return trainer, details


def useful_flops_per_token(job: dict) -> float:
    """LoRA: forward 2N + input gradients 2N over the matmul weights (frozen weights get no weight
    gradient), plus causal attention (QK^T and AV: forward 2*s*d per layer, backward twice that)."""
    from tunekit.train.memory import parameter_counts

    config = model_config(job)
    layers, embed, _ = parameter_counts(config)
    matmul_params = layers + embed  # the LM head multiplies by a vocab x hidden matrix, tied or not
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 6 * config.num_hidden_layers * job["seq_len"] * config.num_attention_heads * head_dim
    return 4 * matmul_params + attention


def measure(job: dict) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = True
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        if job["path"] == "baseline":
            trainer, details = baseline_trainer(job, timer, out_dir)
        else:
            trainer, details = tunekit_trainer(job, timer, out_dir, fast_enabled=job["path"] == "tunekit")
        _sync()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    warmup, steps = job["warmup"], job["steps"]
    ends = [timer.start, *timer.ends]
    step_times = [b - a for a, b in zip(ends, ends[1:])]
    timed = step_times[warmup:]
    tokens_per_step = job["batch_size"] * job["seq_len"]
    tokens_per_s = tokens_per_step * len(timed) / sum(timed)
    flops = useful_flops_per_token(job)
    return {
        "path": job["path"],
        "tokens_per_s": round(tokens_per_s, 1),
        "step_time_s": round(sum(timed) / len(timed), 4),
        "step_time_median_s": round(sorted(timed)[len(timed) // 2], 4),
        "first_step_s": round(step_times[0], 3),
        "timed_steps": len(timed),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if CUDA else None,
        "useful_flops_per_token": flops,
        "mfu": round(tokens_per_s * flops / H100_BF16_DENSE_FLOPS, 4),
        "losses": timer.losses,
        "details": details,
        "gpu": torch.cuda.get_device_name(0) if CUDA else "none (dry run)",
        "expected_steps": warmup + steps,
    }


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    if job["path"] == "save":
        save_random_model(job)
        result = {"saved": job["weights_dir"]}
    else:
        result = measure(job)
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
