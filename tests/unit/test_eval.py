"""The eval stage: metric functions on crafted strings, and `evaluate` on a hand-built run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.eval_helpers import MAX_NEW, REF, TICKETS
from tunekit.config import load_recipe
from tunekit.errors import RunDirError
from tunekit.eval.metrics import exact_match, field_counts, field_matches, json_valid
from tunekit.eval.task import TaskSpec, aggregate, score
from tunekit.runs import RunPaths, read_jsonl


# ----------------------------------------------------------------------------- metrics


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match(f"  {REF}\n", REF)
    assert not exact_match('{"category":"billing","priority":"high"}', REF)  # same JSON, other spacing


@pytest.mark.parametrize(
    "text, valid",
    [
        (REF, True),
        ("  [1, 2]\n", True),
        (f"```json\n{REF}\n```", False),  # fenced: strict JSON only
        (f"{REF} Hope this helps!", False),  # trailing prose
        ('"billing"', False),  # a JSON scalar, not an object or array
        ("42", False),
        ("", False),
        ("{'category': 'billing'}", False),  # Python dict syntax
    ],
)
def test_json_valid_is_strict(text, valid):
    assert json_valid(text) is valid


def test_field_matches_counts_each_field():
    assert field_matches(REF, REF) == {"category": True, "priority": True}
    assert field_matches('{"category": "billing", "priority": "low"}', REF) == {"category": True, "priority": False}
    assert field_matches('{"category": "billing"}', REF) == {"category": True, "priority": False}  # missing key
    assert field_matches(f"```json\n{REF}\n```", REF) == {"category": False, "priority": False}  # unparsable
    assert field_matches('["billing", "high"]', REF) == {"category": False, "priority": False}  # not an object
    assert field_matches('{"n": 1.0}', '{"n": 1}') == {"n": False}  # 1.0 is not 1
    assert field_matches('{"n": true}', '{"n": 1}') == {"n": False}
    assert field_matches(REF, "plain text answer") is None  # no fields to compare
    assert field_matches(REF, "[1, 2]") is None


def test_aggregate_exact_numbers():
    references = [REF, REF, REF, REF, "Paris"]
    outputs = [
        REF,  # all right
        '{"category": "billing", "priority": "low"}',  # priority wrong
        f"```json\n{REF}\n```",  # fenced: invalid, no field right
        '{"priority": "high", "category": "shipping", "extra": 1}',  # category wrong, extra key ignored
        " Paris ",  # non-JSON reference: exact match only
    ]
    spec = TaskSpec(metrics=["exact_match", "json_valid", "field_accuracy"])
    per_example = [score(o, r, spec) for o, r in zip(outputs, references)]
    assert [r["exact_match"] for r in per_example] == [True, False, False, False, True]
    assert [r["json_valid"] for r in per_example] == [True, True, False, True, False]
    assert [r["all_fields"] for r in per_example] == [True, False, False, False, None]
    assert per_example[4]["fields"] is None

    result = aggregate(per_example, spec)
    summary, per_field = result["metrics"], result["per_field"]
    assert summary == {
        "exact_match": pytest.approx(2 / 5),
        "json_valid": pytest.approx(3 / 5),
        "field_accuracy": pytest.approx(4 / 8),  # (2 + 1 + 0 + 1) right of 4 examples x 2 fields
        "all_fields": pytest.approx(1 / 4),  # over the 4 JSON-object references
    }
    assert per_field == {"category": pytest.approx(2 / 4), "priority": pytest.approx(2 / 4)}
    assert field_counts(references) == {"category": 4, "priority": 4}


def test_aggregate_only_chosen_metrics_and_no_object_references():
    spec = TaskSpec(metrics=["exact_match", "field_accuracy"])
    result = aggregate([score("Paris", "Paris", spec)], spec)
    summary, per_field = result["metrics"], result["per_field"]
    assert summary == {"exact_match": 1.0, "field_accuracy": None, "all_fields": None}
    assert per_field == {}


# ----------------------------------------------------------------------------- evaluate

def _eval(run_root: Path, *overrides: str) -> tuple[dict, list[dict]]:
    from tunekit.eval import evaluate

    recipe = load_recipe(run_root, list(overrides))
    run = RunPaths(recipe.run_dir)
    result = evaluate(recipe, run)
    report = result.report
    assert json.loads(run.eval_report.read_text()) == report
    # The typed result carries the report's own numbers.
    assert result.report_path == run.eval_report and result.n_examples == report["n_examples"]
    assert result.metrics == report["metrics"] and result.passed is report["verdict"]["passed"] is True
    return report, read_jsonl(result.predictions_path)


def _plain_greedy(model_dir: Path, prompt: list[dict], adapter: Path | None = None) -> str:
    """Greedy generation with plain transformers (and PEFT's unmerged adapter), one unpadded prompt:
    the reference behaviour."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, enc["input_ids"].shape[1] :].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def test_evaluate_writes_report_and_predictions(run_dir, tiny_model_dir):
    report, predictions = _eval(run_dir)

    assert report["n_examples"] == len(TICKETS) == len(predictions)
    assert set(report["model"]) == {"base", "tuned"}
    assert report["settings"]["max_new_tokens"] == MAX_NEW and report["settings"]["decoding"] == "greedy"
    assert [p["meta"]["line"] for p in predictions] == [1, 2, 3, 4, 5]
    assert [p["reference"] for p in predictions] == [answer for _, answer in TICKETS]
    assert all(p["prompt"][-1] == {"role": "user", "content": user} for p, (user, _) in zip(predictions, TICKETS))
    # Per-field denominators: 4 of the 5 references are JSON objects.
    assert report["per_field"]["category"]["n"] == 4

    # The base numbers come from the base model itself: same text as plain transformers greedy decoding
    # of each prompt alone (eval runs the shared system prompt once and batches the rest behind it).
    assert [p["base_output"] for p in predictions] == [_plain_greedy(tiny_model_dir, p["prompt"]) for p in predictions]
    # The adapter is really applied for the tuned side, which generates with it merged into the
    # weights (after the base has answered): the same text as PEFT's unmerged adapter.
    assert all(p["tuned_output"] != p["base_output"] for p in predictions)
    adapter = RunPaths(run_dir).adapter_dir
    assert [p["tuned_output"] for p in predictions] == [_plain_greedy(tiny_model_dir, p["prompt"], adapter) for p in predictions]

    # Report numbers agree with the per-example values written next to them.
    for side in ("base", "tuned"):
        assert report["model"][side]["exact_match"] == sum(p[f"{side}_metrics"]["exact_match"] for p in predictions) / 5
        assert report["model"][side]["json_valid"] == sum(p[f"{side}_metrics"]["json_valid"] for p in predictions) / 5
        timing = report["timing"][side]
        assert timing["generated_tokens"] <= MAX_NEW * len(TICKETS) and timing["seconds"] > 0


def test_answers_cut_at_the_budget_are_counted_and_the_default_budget_fits_the_references(run_dir, tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    from tunekit.console import console

    # A random tiny model never ends its answer: every answer runs into max_new_tokens.
    with console.capture() as captured:
        report, predictions = _eval(run_dir)
    assert {p["tuned_finish_reason"] for p in predictions} == {p["base_finish_reason"] for p in predictions} == {"length"}
    assert all(p["tuned_tokens"] == MAX_NEW for p in predictions)
    assert report["truncated"] == {"tuned": {"n": 5, "of": 5}, "base": {"n": 5, "of": 5}}
    assert report["metrics"]["task.truncated_share"] == report["metrics"]["base.task.truncated_share"] == 1.0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = max(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 for _, answer in TICKETS)
    assert report["settings"]["reference_tokens_max"] == longest
    assert f"5 of 5 tuned answers were cut at max_new_tokens={MAX_NEW} (references are up to {longest} tokens)" in captured.get()

    # No eval.max_new_tokens: the budget comes from the references (a quarter more, plus 16).
    report, predictions = _eval(run_dir, "eval.max_new_tokens=null", "eval.compare_base=false")
    assert report["settings"]["max_new_tokens"] == math.ceil(longest * 1.25) + 16
    assert report["settings"]["max_new_tokens_from"] == "references"
    assert all(p["tuned_tokens"] <= report["settings"]["max_new_tokens"] for p in predictions)

    # A gate can fail on it.
    from tunekit.eval.gates import GateFailure

    with pytest.raises(GateFailure):
        _eval(run_dir, "eval.gates=[task.truncated_share <= 0.1]")


def test_batched_left_padded_generation_equals_one_by_one(run_dir):
    _, batched = _eval(run_dir, "eval.batch_size=4")
    _, single = _eval(run_dir, "eval.batch_size=1")
    assert [p["tuned_output"] for p in batched] == [p["tuned_output"] for p in single]
    assert [p["base_output"] for p in batched] == [p["base_output"] for p in single]


def test_max_examples_and_no_base(run_dir):
    report, predictions = _eval(run_dir, "eval.max_examples=2", "eval.compare_base=false")
    assert report["n_examples"] == 2 and len(predictions) == 2
    assert set(report["model"]) == {"tuned"} and set(report["timing"]) == {"tuned"}
    assert "base_output" not in predictions[0]


def test_missing_stage_outputs_name_the_command_to_run(run_dir):
    from tunekit.eval import evaluate

    recipe = load_recipe(run_dir)
    run = RunPaths(recipe.run_dir)
    run.split("test").unlink()
    with pytest.raises(RunDirError, match="test.jsonl not found") as err:
        evaluate(recipe, run)
    assert "tunekit data prepare" in err.value.hint
    (run.adapter_dir / "adapter_config.json").unlink()
    with pytest.raises(RunDirError) as err:
        evaluate(recipe, run)
    assert "tunekit train" in err.value.hint


def test_a_run_without_a_test_split_has_no_task_eval_and_says_so(run_dir):
    from tunekit.console import console
    from tunekit.eval import evaluate

    recipe = load_recipe(run_dir)
    run = RunPaths(recipe.run_dir)
    run.split("test").rename(run.split("train"))  # prepared data without a test split
    with console.capture() as captured:
        result = evaluate(recipe, run)
    assert result.skipped and result.passed and result.n_examples == 0 and not run.eval_report.exists()
    assert "eval skipped: no test split in" in captured.get() and "data.test_fraction" in captured.get()


def test_cli_eval_max_examples(run_dir):
    import typer
    from typer.testing import CliRunner

    from tunekit.cli.eval import register

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `eval` a named subcommand
    register(app)
    assert CliRunner().invoke(app, ["eval", "--help"]).exit_code == 0
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--max-examples", "1", "--set", "eval.compare_base=false"])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(run_dir / "eval" / "predictions.jsonl")) == 1
    assert json.loads((run_dir / "eval" / "eval_report.json").read_text())["n_examples"] == 1


def test_the_base_side_refuses_to_answer_from_merged_weights(run_dir):
    from tunekit.errors import TunekitError
    from tunekit.eval.generation import Decoding
    from tunekit.eval.targets import load_sides

    recipe = load_recipe(run_dir, [])
    sides = load_sides(recipe, RunPaths(recipe.run_dir), need_base=True)
    prompt = [[{"role": "user", "content": TICKETS[0][0]}]]
    base_first = sides["base"].answer(prompt, Decoding(4, 1), "base").outputs
    assert sides["tuned"].merge_to_generate
    sides["tuned"].answer(prompt, Decoding(4, 1), "tuned")
    assert not sides["tuned"].merge_to_generate and any(getattr(m, "merged", False) for m in sides["tuned"].model.modules())
    other = [[{"role": "user", "content": TICKETS[1][0]}]]  # not in the answer cache (a cached base answer is still the base's)
    with pytest.raises(TunekitError, match="answer the base first"):
        sides["base"].answer(other, Decoding(4, 1), "base")
    assert base_first
