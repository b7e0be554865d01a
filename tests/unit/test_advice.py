"""Hyperparameter warnings (tunekit.train.advice) and the generated recipe reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit.config import Recipe, parse_recipe
from tunekit.runs import write_json, write_jsonl
from tunekit.train.advice import count_train_examples, risky_settings

ROOT = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path | None = None, **train) -> Recipe:
    base = tmp_path or Path("/nonexistent")
    return parse_recipe({"name": "t", "output_dir": str(base / "runs"), "data": {"train": "train.jsonl"}, "train": train}, base_dir=base)


def warnings_for(n_train: int | None = 2000, **train) -> list[str]:
    return risky_settings(recipe(**train), n_train)


def test_good_defaults_give_no_warnings():
    assert warnings_for() == []
    assert warnings_for(None) == []
    assert warnings_for(adapter="full", learning_rate=2e-5) == []
    assert warnings_for(adapter="qlora", lora={"r": 64, "alpha": 128}) == []


@pytest.mark.parametrize("adapter", ["lora", "qlora", "dora", "rslora"])
def test_high_learning_rate_with_an_adapter(adapter):
    found = warnings_for(adapter=adapter, learning_rate=1e-3)
    assert len(found) == 1 and f"learning_rate 0.001 is high for {adapter} (> 5e-4)" in found[0]
    assert warnings_for(adapter=adapter, learning_rate=5e-4) == []


def test_very_low_learning_rate_with_an_adapter():
    assert "very low for lora" in warnings_for(learning_rate=5e-6)[0]
    assert warnings_for(learning_rate=1e-5) == []


def test_full_fine_tuning_learning_rate():
    found = warnings_for(adapter="full", learning_rate=2e-4)
    assert len(found) == 1 and "high for full fine-tuning (> 5e-5)" in found[0]
    assert warnings_for(adapter="full", learning_rate=5e-5) == []


def test_dpo_learning_rate_is_judged_against_dpo_ranges():
    assert "high for DPO with lora (> 5e-05)" in warnings_for(method="dpo", learning_rate=2e-4)[0]
    assert warnings_for(method="dpo", learning_rate=5e-6) == []
    assert "high for DPO with full (> 5e-06)" in warnings_for(method="dpo", adapter="full", learning_rate=1e-5)[0]
    assert warnings_for(method="dpo", adapter="full", learning_rate=1e-6) == []


def test_many_epochs_on_a_small_set():
    found = warnings_for(500, epochs=10)
    assert len(found) == 1 and "train.epochs 10 on 500 training examples" in found[0]
    assert warnings_for(5000, epochs=10) == []  # a large set can take more passes
    assert warnings_for(500, epochs=5) == []
    assert warnings_for(None, epochs=10) == []  # unknown size: not judged
    assert warnings_for(500, epochs=10, max_steps=200) == []  # max_steps decides the length


def test_rank_above_128():
    found = warnings_for(lora={"r": 256, "alpha": 512})
    assert len(found) == 1 and "train.lora.r 256 is above 128" in found[0]
    assert warnings_for(lora={"r": 128, "alpha": 256}) == []
    assert warnings_for(adapter="full", learning_rate=1e-5, lora={"r": 256, "alpha": 2}) == []  # LoRA unused


def test_extreme_alpha_over_r():
    assert "= 0.125, outside 0.5-4; updates will be tiny" in warnings_for(lora={"r": 16, "alpha": 2})[0]
    assert "= 8, outside 0.5-4; updates will be large" in warnings_for(lora={"r": 16, "alpha": 128})[0]
    assert warnings_for(lora={"r": 16, "alpha": 16}) == []
    # rsLoRA scales by alpha / sqrt(r): r 64, alpha 16 is a normal 2 there but 0.25 for plain LoRA
    assert warnings_for(adapter="rslora", lora={"r": 64, "alpha": 16}) == []
    assert "alpha / r = 0.25" in warnings_for(lora={"r": 64, "alpha": 16})[0]


def test_too_few_optimizer_steps():
    found = warnings_for(20, epochs=1, batch_size=8)
    assert len(found) == 1 and "only 3 optimizer step(s)" in found[0]
    assert warnings_for(80, epochs=1, batch_size=8) == []  # 10 steps


def test_long_warmup():
    assert "warmup_ratio 0.5" in warnings_for(warmup_ratio=0.5)[0]
    assert warnings_for(warmup_ratio=0.1) == []


def test_count_train_examples_prefers_the_prepared_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"messages": []}] * 50)
    with (tmp_path / "train.jsonl").open("a") as fh:
        fh.write("\n\n")  # blank lines are not examples
    cfg = recipe(tmp_path)
    assert count_train_examples(cfg) == 45  # val_fraction 0.1 held out
    write_json(cfg.run_dir / "data" / "data_report.json", {"splits": {"train": {"rows": 37}}})
    assert count_train_examples(cfg) == 37


def test_validate_prints_the_warnings(tmp_path, tiny_model_dir):
    import typer
    from typer.testing import CliRunner

    from tunekit.cli.run import register

    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}] * 30)
    path = tmp_path / "recipe.yaml"
    path.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\ntrain:\n  epochs: 8\n  learning_rate: 0.001\n")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "learning_rate 0.001 is high for lora" in result.output
    assert "train.epochs 8 on 27 training examples" in result.output


def test_recipe_reference_is_in_sync_with_the_config():
    from tunekit.config_reference import render

    committed = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/recipe.md is stale: run `python -m tunekit.config_reference > docs/recipe.md`"


def test_recipe_reference_documents_every_key():
    from tunekit.config_reference import _sections, render

    text = render()
    for path, model in _sections(Recipe, ""):
        assert (f"## `{path}`" if path else "## Top level") in text
        for name, field in model.model_fields.items():
            assert field.description, f"{path}.{name} has no description"
            assert f"| `{field.alias or name}` |" in text
    assert "| `r` | int | `16` | LoRA rank: the adapter's capacity. 8-16 teaches a format" in text
    assert "| `method` | `sft` \\| `dpo` \\| `cpt` |" in text
