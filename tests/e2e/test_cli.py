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
    ["train"],
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
