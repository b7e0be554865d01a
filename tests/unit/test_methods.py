"""Training methods on the tiny random Llama: packing, DPO, CPT, DoRA/rsLoRA/full, QLoRA refusal, mixing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from transformers import TrainerCallback

from tests.row_helpers import chat_examples
from tunekit.config import parse_recipe
from tunekit.errors import DataError, ModelError, RecipeError, RunDirError
from tunekit.runs import RunPaths, read_jsonl, write_jsonl
from tunekit.train import TrainResult, train
from tunekit.train.sft import build_trainer


def make_run(tmp_path, model_dir, rows, val_rows=(), name="t", **train):
    recipe = parse_recipe(
        {
            "base_model": str(model_dir),
            "data": {"train": "train.jsonl", "max_length": 128},
            "train": {"batch_size": 4, "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", **train},
            "output_dir": "runs",
            "name": name,
        },
        base_dir=tmp_path,
    )
    run = RunPaths(recipe.run_dir)
    with_meta = [{**row, "meta": {"source": "train.jsonl", "line": i + 1}} for i, row in enumerate(rows)]
    write_jsonl(run.split("train"), with_meta)
    if val_rows:
        write_jsonl(run.split("val"), [{**row, "meta": {"source": "val.jsonl", "line": i + 1}} for i, row in enumerate(val_rows)])
    return recipe, run


def logged(run, key):
    return [json.loads(line)[key] for line in run.metrics.read_text().splitlines() if f'"{key}"' in line]


class Snapshot(TrainerCallback):
    """Every trainable parameter at the start of training."""

    def __init__(self):
        self.before = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def preference_rows(n=8):
    return [
        {
            "prompt": [{"role": "user", "content": f"Ticket {i}: my parcel {i} is late."}],
            "chosen": [{"role": "assistant", "content": json.dumps({"category": "shipping"})}],
            "rejected": [{"role": "assistant", "content": f"Well, I am not sure what to say about parcel {i}."}],
        }
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------ config


def test_method_combinations_are_checked_with_key_paths(tmp_path):
    base = {"data": {"train": "t.jsonl"}}
    cases = {
        "train: packing: true applies to method sft": {"method": "dpo", "packing": True},
        "train: mix: mixing in general data applies to methods sft and cpt": {"method": "dpo", "mix": {"file": "g.jsonl"}},
        "train: dpo.init_from: applies to method dpo": {"method": "sft", "dpo": {"init_from": "runs/sft"}},
    }
    for expected, train in cases.items():
        with pytest.raises(RecipeError) as err:
            parse_recipe({**base, "train": train})
        assert err.value.problems[0].startswith(expected), err.value.problems
    with pytest.raises(RecipeError) as err:
        parse_recipe({**base, "train": {"adapter": "qlora4", "dpo": {"loss_type": "kto"}}})
    assert [p.split(":")[0] for p in err.value.problems] == ["train.adapter", "train.dpo.loss_type"]

    recipe = parse_recipe(
        {**base, "train": {"method": "dpo", "adapter": "full", "lora": {"r": 4}, "dpo": {"init_from": "runs/sft", "loss_type": "ipo"}}},
        base_dir=tmp_path,
    )
    assert recipe.train.dpo.init_from == tmp_path.resolve() / "runs" / "sft"
    assert (recipe.train.dpo.beta, recipe.train.dpo.loss_type) == (0.1, "ipo")
    mixed = parse_recipe({**base, "train": {"mix": {"file": "general.jsonl", "ratio": 0.25}}}, base_dir=tmp_path)
    assert mixed.train.mix.file == tmp_path.resolve() / "general.jsonl" and mixed.train.mix.seed == 42


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_qlora_on_cpu_says_what_to_use_instead(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = make_run(tmp_path, tiny_model_dir, chat_rows, adapter="qlora")
    run.split("train").unlink()  # refused before the data or the weights are read
    with pytest.raises(ModelError) as err:
        train(recipe, run, show_progress=False)
    assert "qlora needs a CUDA GPU with bitsandbytes" in err.value.message
    assert err.value.hint == "on this machine use train.adapter: lora (or dora)"


def test_dpo_refuses_chat_rows_naming_data_train(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = make_run(tmp_path, tiny_model_dir, chat_rows, method="dpo")
    with pytest.raises(DataError) as err:
        train(recipe, run, show_progress=False)
    assert err.value.message == "data.train holds chat rows; train.method dpo needs preference rows (prompt, chosen, rejected)"
    assert "train.method sft" in err.value.hint


# ----------------------------------------------------------------------------------- packing


def _one_batch_loss(trainer):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()  # no dropout: the two layouts must see the same function
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return float(loss), batch


def test_packed_and_padded_batches_give_the_same_loss(tmp_path, tiny_model_dir, chat_rows):
    rows = chat_rows[:4]
    losses, batches = {}, {}
    for packing in (False, True):
        recipe, run = make_run(tmp_path, tiny_model_dir, rows, name=f"p{packing}", packing=packing, lora={"dropout": 0.0})
        trainer, _ = build_trainer(recipe, run)
        # LoRA B starts at zero: give it weights so the adapter takes part in the comparison.
        torch.manual_seed(1)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.05)
        losses[packing], batches[packing] = _one_batch_loss(trainer)
    padded, packed = batches[False], batches[True]
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # padding-free: one row
    assert int((packed["position_ids"] == 0).sum()) == 4  # positions restart at each example
    assert int((padded["labels"] != -100).sum()) == int((packed["labels"] != -100).sum())  # same trained tokens
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)

    # Attention really stays inside each example: the same packed row read as one long sequence
    # (positions never restarting) gives another loss.
    trainer.model.eval()
    crossing = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    with torch.no_grad():
        crossed = float(trainer.compute_loss(trainer.model, crossing))
    assert abs(crossed - losses[True]) > 1e-3


# --------------------------------------------------------------------------------------- DPO


def test_dpo_with_lora_raises_the_reward_margin(tmp_path, tiny_model_dir):
    recipe, run = make_run(
        tmp_path, tiny_model_dir, preference_rows(4), preference_rows(6)[4:], method="dpo", max_steps=5, learning_rate=1e-2
    )
    result = train(recipe, run, show_progress=False)
    margins = logged(run, "rewards/margins")
    assert len(margins) == 5
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter starts as the reference (the base)
    assert margins[-1] > margins[0] + 0.5 and logged(run, "rewards/accuracies")[-1] == 1.0
    assert result.metrics["eval_rewards/margins"] > 0
    manifest = json.loads(run.manifest.read_text())
    assert manifest["method"] == "dpo" and manifest["training"]["reference"] == "the base model (adapter disabled)"
    assert manifest["training"]["beta"] == 0.1 and manifest["training"]["loss_type"] == "sigmoid"
    assert manifest["result"]["rewards/margins"] == margins[-1]


def test_dpo_from_an_sft_run_uses_the_sft_model_as_reference(tmp_path, tiny_model_dir, mixed_sft):
    from safetensors.torch import load_file

    sft_run = mixed_sft.run
    sft_weights = load_file(sft_run.adapter_dir / "adapter_model.safetensors")
    assert any(float(w.abs().max()) > 0 for k, w in sft_weights.items() if "lora_B" in k)  # SFT != base

    recipe, run = make_run(
        tmp_path, tiny_model_dir, preference_rows(4), name="dpo", method="dpo", max_steps=4,
        learning_rate=3e-3, dpo={"init_from": str(sft_run.root), "beta": 0.5},  # 1e-2 can overshoot by step 4
    )  # fmt: skip
    train(recipe, run, show_progress=False)
    # Step 1 is measured before any update: zero rewards mean the reference *is* the SFT model.
    assert logged(run, "rewards/chosen")[0] == pytest.approx(0.0, abs=1e-5)
    margins = logged(run, "rewards/margins")
    assert margins[-1] > margins[0]
    dpo_weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert set(dpo_weights) == set(sft_weights)  # the SFT adapter kept training; TRL's "ref" copy is not saved
    assert all(not torch.equal(dpo_weights[k], sft_weights[k]) for k in sft_weights)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["training"]["init_from"] == str(sft_run.adapter_dir)
    assert manifest["training"]["reference"] == "frozen copy of the SFT adapter"


def test_dpo_init_from_must_hold_an_adapter_or_a_model(tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    recipe, run = make_run(tmp_path, tiny_model_dir, preference_rows(4), method="dpo", dpo={"init_from": "empty"})
    with pytest.raises(RunDirError) as err:
        train(recipe, run, show_progress=False)
    assert err.value.message.startswith("train.dpo.init_from: ") and "holds no adapter" in err.value.message


# --------------------------------------------------------------------------------------- CPT


def test_cpt_packs_raw_text_and_trains_on_every_token(tmp_path, tiny_model_dir, smol_tokenizer):
    texts = [f"Document {i}. " + " ".join(f"The parcel {j} left the depot on day {j}." for j in range(i % 4 + 2)) for i in range(8)]
    texts.append("A long manual. " + " ".join(f"Step {j}: turn the valve." for j in range(40)))  # > max_length
    recipe, run = make_run(
        tmp_path, tiny_model_dir, [{"text": t} for t in texts], method="cpt", max_steps=6, batch_size=2, learning_rate=1e-2
    )
    result = train(recipe, run, show_progress=False)

    expected_tokens = sum(len(smol_tokenizer(t + smol_tokenizer.eos_token)["input_ids"]) for t in texts)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["training"]["train_tokens"] == expected_tokens  # the long document is split, not cut
    assert manifest["training"]["packed_rows"] < len(texts)
    losses = logged(run, "loss")
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert result.output_dir == run.adapter_dir


def test_cpt_batches_hold_every_token_as_a_label(tmp_path, tiny_model_dir):
    from tunekit.train import cpt

    texts = [f"Report {i}: " + "all parcels arrived on time. " * (i + 1) for i in range(6)]
    recipe, run = make_run(tmp_path, tiny_model_dir, [{"text": t} for t in texts], method="cpt")
    trainer = cpt.build(recipe, run).trainer
    assert all(len(ids) <= 128 for ids in trainer.train_dataset["input_ids"])
    batch = next(iter(trainer.get_train_dataloader()))
    starts = batch["position_ids"] == 0
    # Only the first token of each document has no label (nothing before it predicts it).
    assert torch.equal(batch["labels"][~starts], batch["input_ids"][~starts])


# ------------------------------------------------------------------------ DoRA, rsLoRA, full


@pytest.mark.parametrize("adapter", ["dora", "rslora"])
def test_dora_and_rslora_train_every_adapter_weight_and_load_in_peft(tmp_path, tiny_model_dir, chat_rows, adapter):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe, run = make_run(tmp_path, tiny_model_dir, chat_rows[:8], adapter=adapter, max_steps=3, learning_rate=1e-2, lora={"r": 4, "alpha": 8})
    snapshot = Snapshot()
    train(recipe, run, show_progress=False, callbacks=[snapshot])
    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    magnitudes = [n for n in snapshot.before if "lora_magnitude_vector" in n]
    assert (len(magnitudes) == 2 * 7) if adapter == "dora" else not magnitudes
    assert len(saved) == len(snapshot.before) == 2 * 7 * (3 if adapter == "dora" else 2)
    def saved_name(name):  # PEFT drops the adapter name (and DoRA's ".weight") in the file
        return name.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")

    for name, before in snapshot.before.items():
        assert not torch.equal(before, saved[saved_name(name)]), f"{name} did not move"

    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert (config["use_dora"], config["use_rslora"]) == (adapter == "dora", adapter == "rslora")
    details = json.loads(run.manifest.read_text())["adapter_details"]
    assert details["scale"] == pytest.approx(8 / 2 if adapter == "rslora" else 8 / 4)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    name = next(iter(snapshot.before))
    assert torch.equal(loaded.get_parameter(name).detach(), saved[saved_name(name)])


def test_full_fine_tuning_trains_every_weight_and_saves_a_whole_model(tmp_path, tiny_model_dir, chat_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, run = make_run(tmp_path, tiny_model_dir, chat_rows[:8], adapter="full", max_steps=2, learning_rate=1e-3, lora={"r": 4})
    snapshot = Snapshot()
    result = train(recipe, run, show_progress=False, callbacks=[snapshot])
    assert result.trainable_params == result.total_params and result.adapter_dir is None
    assert result.output_dir == run.model_dir and not run.adapter_dir.exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert len(snapshot.before) == len(list(base.parameters()))
    trained = AutoModelForCausalLM.from_pretrained(run.model_dir)
    for name, before in snapshot.before.items():
        after = trained.get_parameter(name).detach()
        assert not torch.equal(before, after), f"{name} did not move"
    assert (run.model_dir / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(run.model_dir).eos_token == "<|im_end|>"
    assert json.loads(run.manifest.read_text())["output"] == {"kind": "model", "path": str(run.model_dir)}


# ------------------------------------------------------------------------------------ mixing


@dataclass
class TrainedRun:
    recipe: object
    run: RunPaths
    result: TrainResult
    general: list[dict]


@pytest.fixture(scope="module")
def mixed_sft(tmp_path_factory, tiny_model_dir) -> TrainedRun:
    """One SFT run with general data mixed in, trained once: the mixing test checks its accounting and
    the DPO test starts from its adapter (lr 1e-2, so the adapter is clearly not the base)."""
    root = tmp_path_factory.mktemp("mixed-sft")
    general = [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(6)
    ]
    lines = [json.dumps(row) for row in general] + ['{"question": "no known format"}', "{broken json"]
    (root / "general.jsonl").write_text("\n".join(lines) + "\n")
    recipe, run = make_run(
        root, tiny_model_dir, chat_examples(8), name="sft", max_steps=2, learning_rate=1e-2,
        mix={"file": "general.jsonl", "ratio": 0.2, "seed": 3},
    )  # fmt: skip
    return TrainedRun(recipe, run, train(recipe, run, show_progress=False), general)


def test_general_data_is_mixed_in_at_the_ratio_and_accounted_for(mixed_sft):
    run, general = mixed_sft.run, mixed_sft.general
    trained = read_jsonl(run.mixed_train)
    mixed = [row for row in trained if row["meta"].get("mixed")]
    assert (len(trained), len(mixed)) == (10, 2)  # 2 of 10 rows = ratio 0.2
    assert all(row["messages"] in [g["messages"] for g in general] for row in mixed)
    quarantined = {(q["line"], q["reason"]) for q in read_jsonl(run.mix_quarantine)}
    assert quarantined == {(7, "unknown_format"), (8, "invalid_json")}
    mix = json.loads(run.manifest.read_text())["training"]["mix"]
    assert (mix["records_in_file"], mix["usable_rows"], mix["quarantined_rows"]) == (8, 6, 2)
    assert (mix["task_rows"], mix["mixed_rows"], mix["train_rows"], mix["mixed_share"]) == (8, 2, 10, 0.2)
    assert isinstance(mixed_sft.result, TrainResult) and mixed_sft.result.steps == 2
    assert mixed_sft.result.output_dir == run.adapter_dir and mixed_sft.result.method == "sft"


def test_mixing_refuses_a_file_without_enough_rows_of_the_right_kind(tmp_path, tiny_model_dir, chat_rows):
    (tmp_path / "general.jsonl").write_text("".join(json.dumps({"text": f"plain text {i}"}) + "\n" for i in range(3)))
    recipe, run = make_run(tmp_path, tiny_model_dir, chat_rows[:8], mix={"file": "general.jsonl", "ratio": 0.5})
    with pytest.raises(DataError) as err:
        train(recipe, run, show_progress=False)
    assert "has 0 usable rows" in err.value.message and "needs 8" in err.value.message
    assert [(q["line"], q["reason"]) for q in read_jsonl(run.mix_quarantine)] == [(1, "wrong_kind"), (2, "wrong_kind"), (3, "wrong_kind")]
