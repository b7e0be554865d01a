"""`evaluate` end to end on a hand-built run dir: the report recounts from predictions.jsonl,
contaminated examples are excluded, gates write a verdict and fail the command, other targets load."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from tunekit.config import load_recipe
from tunekit.eval.gates import GateFailure
from tunekit.eval.task import TaskSpec, aggregate, outcome, score
from tunekit.runs import RunPaths, read_jsonl, write_jsonl

ALL = ["exact_match", "normalized_match", "json_valid", "field_accuracy", "classification", "rules", "rouge_l", "perplexity"]


def _set(run_root, **eval_section):
    recipe = yaml.safe_load((run_root / "recipe.yaml").read_text())
    recipe["eval"].update(eval_section)
    (run_root / "recipe.yaml").write_text(yaml.safe_dump(recipe))


def _run(run_root, *overrides):
    from tunekit.eval import evaluate

    recipe = load_recipe(run_root, list(overrides))
    run = RunPaths(recipe.run_dir)
    try:
        report = evaluate(recipe, run).report
        failure = None
    except GateFailure as exc:
        report, failure = json.loads(run.eval_report.read_text()), exc
    return recipe, run, report, failure


def test_report_recounts_from_predictions_and_excludes_contamination(run_dir, tiny_model_dir):
    run = RunPaths(run_dir)
    test_rows = read_jsonl(run.split("test"))
    write_jsonl(run.split("train"), [test_rows[1]])  # the second test ticket was also trained on
    _set(run_dir, metrics=ALL, label_field="category", rules=[{"name": "brace", "ends_with": "}"}])
    recipe, run, report, failure = _run(run_dir)
    assert failure is None

    predictions = read_jsonl(run.eval_dir / "predictions.jsonl")
    assert [p["excluded"] for p in predictions] == [False, True, False, False, False]
    assert predictions[1]["contamination"] == {"kind": "exact", "split": "train", "line": 1, "similarity": 1.0}
    assert report["contamination"] == {"flagged": 1, "excluded": 1, "examples": [{"index": 1, **predictions[1]["contamination"]}]}
    assert report["n_examples"] == 4 and report["n_total"] == 5

    # Recount every number from the saved outputs alone.
    spec = TaskSpec.from_recipe(recipe)
    kept = [p for p in predictions if not p["excluded"]]
    for side in ("base", "tuned"):
        rescored = [score(p[f"{side}_output"], p["reference"], spec) for p in kept]
        assert rescored == [p[f"{side}_metrics"] for p in kept]
        recount = aggregate(rescored, spec, nll=[tuple(p[f"{side}_nll"]) for p in kept],
                            latency_s=[p[f"{side}_latency_s"] for p in kept], lengths=[p[f"{side}_tokens"] for p in kept],
                            finish=[p[f"{side}_finish_reason"] for p in kept])
        assert recount["metrics"] == pytest.approx(report["model"][side])
        assert report["metrics"][("base." if side == "base" else "") + "task.exact_match"] == report["model"][side]["exact_match"]
        assert report["classification"][side]["n"] == 3  # 3 of the 4 kept references are JSON with a category
        assert sum(sum(row.values()) for row in report["classification"][side]["confusion"].values()) == 3
    fixed = [p["index"] for p in kept if outcome(p["base_metrics"]) is False and outcome(p["tuned_metrics"]) is True]
    assert report["changed"]["fixed"] == fixed

    # Perplexity of the references under the base model, recomputed with plain transformers.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    p = kept[0]
    head = tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*p["prompt"], {"role": "assistant", "content": p["reference"]}], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    nll = -logprobs[torch.arange(n_head - 1, ids.shape[1] - 1), ids[0, n_head:]].sum().item()
    assert p["base_nll"] == [pytest.approx(nll, rel=1e-4), ids.shape[1] - n_head]
    total = sum(q["base_nll"][0] for q in kept) / sum(q["base_nll"][1] for q in kept)
    assert report["model"]["base"]["perplexity"] == pytest.approx(math.exp(total))

    html = (run.eval_dir / "eval_report.html").read_text()
    assert "<h2>classification</h2>" in html and "1 flagged as seen in training" in html


def test_gates_write_verdict_and_fail(run_dir):
    from typer.testing import CliRunner

    _set(run_dir, compare_base=False, gates=["task.json_valid >= 0", "task.exact_match >= 0.99"])
    recipe, run, report, failure = _run(run_dir, "eval.max_examples=2")
    assert isinstance(failure, GateFailure) and "1 of 2 eval gate(s) failed" in failure.message
    verdict = json.loads((run.eval_dir / "verdict.json").read_text())
    assert verdict["passed"] is False
    assert [g["passed"] for g in verdict["gates"]] == [True, False]
    assert verdict["gates"][1]["left"] == report["model"]["tuned"]["exact_match"] == 0.0
    assert report["verdict"]["gates"] == verdict["gates"]

    # The CLI prints the table and exits 1 on FAIL (main() turns TunekitError into exit 1).
    from tunekit.cli.main import _register, app

    _register()
    result = CliRunner().invoke(app, ["eval", str(run_dir), "-n", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, GateFailure)
    assert "FAIL" in result.output and "task.exact_match >= 0.99" in result.output

    _set(run_dir, gates=["task.json_valid >= 0"])
    *_, failure = _run(run_dir, "eval.max_examples=1")
    assert failure is None and json.loads((run.eval_dir / "verdict.json").read_text())["passed"] is True


def test_full_model_dir_and_forgetting_suite(run_dir, tiny_model_dir, tmp_path):
    """A run with model/ (full fine-tune) instead of adapter/: tuned is model/, base loaded separately.
    model/ here holds the base weights themselves, so both sides must answer identically."""
    run = RunPaths(run_dir)
    shutil.rmtree(run.adapter_dir)
    shutil.copytree(tiny_model_dir, run.root / "model")
    suite = tmp_path / "mine.jsonl"
    items = [{"category": c, "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
              "check": {"type": "number", "answer": i + 1}, "max_new_tokens": 3 + i % 2} for i, c in enumerate("aabbc")]
    suite.write_text("".join(json.dumps(item) + "\n" for item in items))
    _set(run_dir, forgetting={"enabled": True, "suites": [str(suite)], "max_items": 4, "batch_size": 2},
         gates=["forgetting.overall_drop <= 0", "forgetting.a_drop <= 0"])
    recipe, run, report, failure = _run(run_dir)
    assert failure is None
    assert report["settings"]["target"] == "model" and report["settings"]["tuned_source"] == str(run.root / "model")
    predictions = read_jsonl(run.eval_dir / "predictions.jsonl")
    assert all(p["tuned_output"] == p["base_output"] for p in predictions)
    assert report["changed"]["n_fixed"] == report["changed"]["n_broken"] == 0
    rows = read_jsonl(run.eval_dir / "forgetting_predictions.jsonl")
    assert [r["category"] for r in rows] == ["a", "a", "b", "c"]  # 4 of 5, every category kept
    assert all(r["tuned_output"] == r["base_output"] for r in rows)
    overall = report["forgetting"]["overall"]
    assert overall["n"] == 4 and overall["drop"] == 0 and overall["verdict"] == "ok"
    assert overall["base"] == sum(r["base_right"] for r in rows) / 4


def test_suite_questions_and_test_examples_seen_through_train_mix_are_left_out(run_dir, tiny_model_dir, tmp_path):
    """train.mix writes data/train_mixed.jsonl (what was trained on); eval checks both the test
    split and the forgetting suite against it, and leaves out what it finds."""
    run = RunPaths(run_dir)
    test_rows = read_jsonl(run.split("test"))
    suite = tmp_path / "mine.jsonl"
    items = [{"category": c, "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
              "check": {"type": "number", "answer": i + 1}} for i, c in enumerate("aabb")]
    suite.write_text("".join(json.dumps(item) + "\n" for item in items))
    mixed = [test_rows[0] | {"messages": test_rows[0]["messages"][:-1] + [{"role": "assistant", "content": "other"}]}, test_rows[2],
             {"messages": [{"role": "user", "content": "What is 2 + 1?"}, {"role": "assistant", "content": "3"}]}]
    write_jsonl(run.mixed_train, mixed)
    _set(run_dir, forgetting={"enabled": True, "suites": [str(suite)], "batch_size": 2}, gates=[])
    recipe, run, report, failure = _run(run_dir)
    assert failure is None
    predictions = read_jsonl(run.eval_dir / "predictions.jsonl")
    assert [p["excluded"] for p in predictions] == [False, False, True, False, False]
    assert predictions[2]["contamination"]["split"] == "train_mixed"
    assert predictions[2]["contamination"]["line"] == len(mixed) - 1
    forgetting = report["forgetting"]
    assert forgetting["contaminated"] == {"n": 1, "excluded": True, "ids": [f"{suite.stem}-3"]}
    assert forgetting["overall"]["n"] == 3 and forgetting["categories"]["b"]["n"] == 1
    rows = read_jsonl(run.eval_dir / "forgetting_predictions.jsonl")
    left_out = [r for r in rows if r.get("excluded")]
    assert len(rows) == 4 and [r["messages"][0]["content"] for r in left_out] == ["What is 2 + 1?"]
    assert left_out[0]["contamination"]["kind"] == "exact"
