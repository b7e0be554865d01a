"""The `tunekit` command as a user meets it: help, mistakes, and a whole run on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunekit.runs import write_jsonl

COMMANDS = [
    [],
    ["run"],
    ["validate"],
    ["data"],
    ["data", "prepare"],
    ["data", "preview"],
    ["train"],
    ["estimate"],
    ["eval"],
    ["export"],
    ["serve"],
    ["chat"],
]


def tunekit(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tunekit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tunekit")
def test_help_works_for_every_command(command):
    result = tunekit(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_registering_the_commands_imports_no_ml_library():
    """`tunekit --help` stays instant: torch/transformers load only when a command runs."""
    code = (
        "import sys; from tunekit.cli.main import _register; _register(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"



def test_recipe_typo_is_one_clear_message_and_exit_1(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train: train.jsonl\ntrain:\n  lerning_rate: 0.001\n  lora:\n    r: -4\n")
    result = tunekit("validate", str(recipe))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "train.lerning_rate: unknown key (did you mean 'train.learning_rate'?)" in result.stderr
    assert "train.lora.r: Input should be greater than 0" in result.stderr
    # the same message from every command that takes a recipe
    assert tunekit("run", str(recipe)).returncode == 1


def test_validate_accepts_a_good_recipe(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n")
    result = tunekit("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stderr


def test_unknown_base_model_directory_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: ./no/such/model\ndata:\n  train: train.jsonl\n")
    result = tunekit("validate", str(recipe))
    assert result.returncode == 1
    assert "base_model './no/such/model' is not a model directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_a_tiny_recipe_does_every_stage(tmp_path, tiny_model_dir):
    """prepare → train → eval → export through the real CLI, on the tiny random model."""
    train_rows = [
        {"messages": [{"role": "user", "content": f"ticket {i}: refund order {i}"}, {"role": "assistant", "content": '{"category": "refund"}'}]}
        for i in range(24)
    ]
    test_rows = [
        {"messages": [{"role": "user", "content": f"case {i}: money back for {i}"}, {"role": "assistant", "content": '{"category": "refund"}'}]}
        for i in range(4)
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", [*train_rows, train_rows[0]])  # one duplicate
    write_jsonl(tmp_path / "data" / "test.jsonl", test_rows)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: tiny\nbase_model: {tiny_model_dir}\n"
        "data: {train: data/train.jsonl, test: data/test.jsonl, max_length: 96}\n"
        "train: {max_steps: 4, batch_size: 4, logging_steps: 1}\n"
        "eval: {max_new_tokens: 8, batch_size: 4}\n"
    )
    result = tunekit("run", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    report = json.loads((run / "data" / "data_report.json").read_text())
    assert report["quarantine"]["by_reason"] == {"duplicate": 1}
    assert sum(report["splits"][s]["rows"] for s in ("train", "val")) == 24
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    eval_report = json.loads((run / "eval" / "eval_report.json").read_text())
    assert eval_report["n_examples"] == 4
    assert (run / "export" / "merged" / "model.safetensors").exists()
    assert "base" in result.stderr and "tuned" in result.stderr

    # A second run into the same directory is refused unless asked to overwrite.
    again = tunekit("run", str(recipe), "--stages", "prepare")
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert tunekit("run", str(recipe), "--stages", "prepare", "--overwrite").returncode == 0


def test_broken_jsonl_lines_stop_with_file_and_line(tmp_path, tiny_model_dir):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    lines = [json.dumps(good), '{"messages": [', json.dumps(good | {"x": 1}), "not json at all"]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n")
    result = tunekit("data", "prepare", str(recipe))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "train.jsonl:2: invalid_json" in result.stderr and "train.jsonl:4: invalid_json" in result.stderr
    assert "data.on_invalid: quarantine" in result.stderr


def test_strict_prepare_fails_on_any_removed_row(tmp_path, tiny_model_dir):
    row = {"messages": [{"role": "user", "content": "a b c d"}, {"role": "assistant", "content": "e"}]}
    other = {"messages": [{"role": "user", "content": "x y z w"}, {"role": "assistant", "content": "v"}]}
    write_jsonl(tmp_path / "train.jsonl", [row, other, row])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n")
    assert tunekit("data", "prepare", str(recipe)).returncode == 0
    result = tunekit("data", "prepare", str(recipe), "--strict")
    assert result.returncode == 1
    assert "--strict: 1 row(s) were removed (duplicate: 1)" in result.stderr
