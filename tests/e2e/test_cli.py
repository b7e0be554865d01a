"""The `tunekit` command as a user meets it: help, mistakes, and a whole run on a tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli_helpers import tunekit
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
    ["cost"],
    ["advise"],
    ["registry"],
]


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


def _table_row(output: str, label: str) -> list[str]:
    """The cells after `label` in every rich table row that starts with it (one list per printed row)."""
    rows = re.findall(rf"│ {re.escape(label)}\s*│(.*)│\s*$", output, flags=re.MULTILINE)
    return [[cell.strip() for cell in row.split("│")] for row in rows]


def _tiny_recipe(tmp_path: Path, model_dir: Path) -> Path:
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
        f"name: tiny\nbase_model: {model_dir}\n"
        "data: {train: data/train.jsonl, test: data/test.jsonl, max_length: 96}\n"
        "train: {max_steps: 4, batch_size: 4, logging_steps: 1}\n"
        "eval: {max_new_tokens: 8, batch_size: 4}\n"
    )
    return recipe


def test_run_on_a_tiny_recipe_does_every_stage(tmp_path, tiny_model_dir):
    """prepare → train → eval → export through the real CLI, on the tiny random model: what it prints
    is what it writes."""
    recipe = _tiny_recipe(tmp_path, tiny_model_dir)
    result = tunekit("run", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stderr
    assert "Traceback" not in out
    run = tmp_path / "runs" / "tiny"

    # prepare: 25 lines, one duplicate quarantined; 24 rows split 22/2 (val_fraction) and the 4 given test rows.
    report = json.loads((run / "data" / "data_report.json").read_text())
    assert report["quarantine"]["by_reason"] == {"duplicate": 1}
    rows = {split: report["splits"][split]["rows"] for split in ("train", "val", "test")}
    assert rows == {"train": 22, "val": 2, "test": 4}
    for split, n in rows.items():
        assert _table_row(out, split)[0][0] == str(n)
        assert len((run / "data" / f"{split}.jsonl").read_text().splitlines()) == n
    assert _table_row(out, "duplicate") == [["1"]]
    quarantined = [json.loads(line) for line in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["reason"], q["line"]) for q in quarantined] == [("duplicate", 25)]

    # train: 4 steps, each logged and printed; the manifest holds the same figures.
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["result"]["steps"] == 4 and manifest["method"] == "sft" and manifest["adapter"] == "lora"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    printed_losses = [float(v) for v in re.findall(r"step \d/4  loss ([\d.]+)", out)]
    assert printed_losses == pytest.approx([m["loss"] for m in steps], abs=1e-4)
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0

    # eval: the table (printed once, after eval; the run ends with the gates and verdict only) shows
    # the report's numbers, which are the means of the per-example scores in predictions.jsonl.
    eval_report = json.loads((run / "eval" / "eval_report.json").read_text())
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert eval_report["n_examples"] == len(predictions) == 4 and set(eval_report["model"]) == {"base", "tuned"}
    assert out.count("eval on 4 test examples (greedy)") == 1
    for metric in ("exact_match", "json_valid", "field_accuracy"):
        base, tuned = (eval_report["model"][side][metric] for side in ("base", "tuned"))
        if metric != "field_accuracy":  # a mean over fields, not examples: test_eval_runner recounts it
            for side, value in (("base", base), ("tuned", tuned)):
                assert value == pytest.approx(sum(p[f"{side}_metrics"][metric] for p in predictions) / 4)
        expected = [f"{base:.3f}", f"{tuned:.3f}", f"{tuned - base:+.3f}"]
        assert _table_row(out, metric) == [expected]
    assert all(p["tuned_tokens"] <= 8 and p["base_tokens"] <= 8 for p in predictions)  # eval.max_new_tokens
    verdict = json.loads((run / "eval" / "verdict.json").read_text())
    assert verdict["passed"] is True and verdict["gates"] == []
    recap = out.split("eval verdict")[1]
    assert "no eval gates in the recipe" in recap and f"full report: {run / 'eval' / 'eval_report.json'}" in recap

    # export: the merged model and its parity check against base + adapter.
    exported = json.loads((run / "export" / "export_report.json").read_text())
    parity = exported["parity"]
    assert exported["source"] == "adapter" and parity["passed"] is True and parity["identical"] == parity["n"] == 3
    assert "parity passed: 3/3 greedy generations identical" in out
    assert (run / "export" / "merged" / "model.safetensors").stat().st_size > 0
    timings = dict(re.findall(r"(prepare|train|eval|export|total) (\d+)s", out.split("timings:")[1]))
    assert list(timings) == ["prepare", "train", "eval", "export", "total"]

    # A second run into the same directory is refused unless asked to overwrite.
    again = tunekit("run", str(recipe), "--stages", "prepare")
    assert again.returncode == 1 and "already holds a run" in again.stderr
    replaced = tunekit("run", str(recipe), "--stages", "prepare", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert (run / "data" / "train.jsonl").exists() and not (run / "adapter").exists() and not (run / "eval").exists()
    assert "timings: prepare" in replaced.stderr and ", train" not in replaced.stderr.split("timings:")[1]


def test_unknown_stage_is_a_usage_error(tmp_path, tiny_model_dir):
    recipe = _tiny_recipe(tmp_path, tiny_model_dir)
    result = tunekit("run", str(recipe), "--stages", "deploy")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'deploy' is not one of" in result.stderr and "'prepare'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_serve_port_out_of_range_is_one_clear_error(tmp_path, tiny_model_dir):
    recipe = _tiny_recipe(tmp_path, tiny_model_dir)
    for args in (["--port", "70000"], ["--set", "serve.port=70000"]):
        result = tunekit("serve", str(recipe), *args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "less than 65536" in result.stderr
    flag = tunekit("serve", str(recipe), "--port", "70000")
    assert "error: --port 70000: Input should be less than 65536" in flag.stderr


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
