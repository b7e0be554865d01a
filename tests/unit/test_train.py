"""LoRA SFT on the tiny random Llama: labels, weight movement, artifacts (other methods: test_methods.py)."""

from __future__ import annotations

import json

import torch
from transformers import TrainerCallback

from tunekit.runs import write_jsonl
from tests.unit.train_helpers import tiny_train_run
from tunekit.train import train
from tunekit.train.sft import build_trainer


def _make_run(tmp_path, tiny_model_dir, chat_rows, **train_settings):
    recipe, run = tiny_train_run(tmp_path, tiny_model_dir, **train_settings)
    rows = [{**row, "meta": {"source": "train.jsonl", "line": i + 1}} for i, row in enumerate(chat_rows)]
    write_jsonl(run.split("train"), rows[:8])
    write_jsonl(run.split("val"), rows[8:])
    return recipe, run


class _Snapshot(TrainerCallback):
    def __init__(self):
        self.before = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_labels_are_minus_100_outside_assistant_turns(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = _make_run(tmp_path, tiny_model_dir, chat_rows, max_steps=1)
    trainer, _ = build_trainer(recipe, run)
    example = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(trained) == chat_rows[0]["messages"][-1]["content"] + "<|im_end|>"
    assert all(label in (-100, t) for t, label in zip(example["input_ids"], example["labels"]))


def test_three_steps_move_every_lora_weight_and_write_artifacts(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = _make_run(tmp_path, tiny_model_dir, chat_rows, max_steps=3, learning_rate=1e-3)
    snapshot = _Snapshot()
    result = train(recipe, run, show_progress=False, callbacks=[snapshot])
    assert result.steps == 3

    from safetensors.torch import load_file

    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    lora_names = [n for n in snapshot.before]
    assert len(lora_names) == len(saved) > 0
    # 2 layers x 7 linear modules (q,k,v,o,gate,up,down) x (A, B)
    assert len(saved) == 2 * 7 * 2
    for name, before in snapshot.before.items():
        key = name.replace(".default", "")
        after = saved[key]
        assert not torch.equal(before.cpu(), after), f"{key} did not move"

    adapter_config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32

    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["tokens_per_s"] > 0 for r in steps)
    assert result.eval_loss is not None and result.eval_loss > 0
    assert run.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads(run.manifest.read_text())
    assert manifest["seed"] == {"data": 42, "train": 42}
    assert manifest["datasets"]["prepared"]["train"]["sha256"]
    assert manifest["packages"]["peft"] and manifest["packages"]["trl"]
    assert manifest["result"]["steps"] == 3
    details = manifest["adapter_details"]
    targets = details.pop("target_modules")  # as saved by PEFT: `all-linear` resolved to module paths
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}
    assert details == {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "use_dora": False, "use_rslora": False, "scale": 2.0}
    training = manifest["training"]
    assert (training["train_rows"], training["val_rows"], training["packing"]) == (8, 2, False)
    assert manifest["output"] == {"kind": "adapter", "path": str(run.adapter_dir)}
    assert (run.root / "recipe.yaml").exists()


def test_loss_falls_when_learning_a_fixed_reply(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = _make_run(tmp_path, tiny_model_dir, chat_rows, max_steps=12, learning_rate=5e-3)
    train(recipe, run, show_progress=False)
    losses = [json.loads(line)["loss"] for line in run.metrics.read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] - 0.5
