"""Eval gates: the expression parser, unknown names caught at validate time, and verdicts on numbers."""

from __future__ import annotations

import pytest

from tunekit.config import parse_recipe
from tunekit.errors import RecipeError
from tunekit.config.gates import GateSyntaxError, known_metric_names, parse_gate
from tunekit.eval.gates import evaluate


def _recipe(tmp_path, **eval_section):
    return parse_recipe({"data": {"train": str(tmp_path / "t.jsonl")}, "eval": eval_section}, base_dir=tmp_path)


def test_parse_and_evaluate_arithmetic_and_base_shorthand():
    values = {"task.accuracy": 0.7, "base.task.accuracy": 0.45, "forgetting.overall_drop": 0.03}
    verdict = evaluate(
        [
            "task.accuracy >= base + 0.2",  # 0.7 >= 0.65
            "task.accuracy >= base + 0.3",  # 0.7 >= 0.75: FAIL
            "forgetting.overall_drop <= 0.05",
            "-(task.accuracy - 1) * 2 < 0.7",  # 0.6 < 0.7
            "task.accuracy / base.task.accuracy > 1.5",  # 1.556
        ],
        values,
    )
    assert [g["passed"] for g in verdict["gates"]] == [True, False, True, True, True]
    assert verdict["gates"][0]["right"] == pytest.approx(0.65)
    assert verdict["gates"][1]["right"] == pytest.approx(0.75)
    assert verdict["gates"][3]["left"] == pytest.approx(0.6)
    assert verdict["passed"] is False and verdict["n_failed"] == 1
    assert parse_gate("task.accuracy >= base + 0.2").names == ["task.accuracy", "base.task.accuracy"]


def test_missing_values_fail_with_a_reason():
    verdict = evaluate(["task.accuracy >= 0.5", "task.x / task.zero > 1"], {"task.accuracy": None, "task.x": 1.0, "task.zero": 0.0})
    assert verdict["gates"][0] == {"gate": "task.accuracy >= 0.5", "left": None, "right": 0.5, "passed": False,
                                   "reason": "not measured: task.accuracy"}
    assert verdict["gates"][1]["reason"] == "not measured: division by zero"
    assert evaluate([], {}) == {"passed": True, "gates": [], "n_failed": 0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("task.accuracy", "needs a comparison"),
        ("task.accuracy >= ", "ends too early"),
        ("task.accuracy >= 0.5 0.6", "unexpected '0.6'"),
        ("__import__('os') >= 1", "unexpected text"),
        ("(task.accuracy >= 1", "not closed"),
        ("base >= 0.5", "`base` needs exactly one"),
        ("task.a + task.b >= base", "`base` needs exactly one"),
    ],
)
def test_syntax_errors(text, message):
    with pytest.raises(GateSyntaxError, match=message):
        parse_gate(text)


def test_known_names_follow_the_config(tmp_path):
    cfg = _recipe(tmp_path, metrics=["exact_match", "classification", "rules"],
                  rules=[{"name": "disclaimer", "ends_with": "Not legal advice."}], forgetting={"enabled": True}).eval
    names = known_metric_names(cfg)
    for name in ["task.exact_match", "base.task.accuracy", "task.macro_f1", "task.rule.disclaimer", "task.latency_ms_mean",
                 "forgetting.overall_drop", "forgetting.arithmetic_drop", "base.forgetting.refusal", "contamination.flagged"]:
        assert name in names, name
    assert "judge.win_rate" not in names and "task.json_valid" not in names


def test_unknown_metric_is_a_recipe_error_with_key_path_and_known_names(tmp_path):
    with pytest.raises(RecipeError) as err:
        _recipe(tmp_path, gates=["task.json_valid >= 0.9", "task.acuracy >= base + 0.2", "judge.win_rate >= 0.6"])
    problems = err.value.problems
    assert len(problems) == 1
    assert problems[0].startswith("eval.gates: [1] 'task.acuracy >= base + 0.2': unknown metric task.acuracy, base.task.acuracy")
    assert "[2] 'judge.win_rate >= 0.6': unknown metric judge.win_rate" in problems[0]
    assert "known here: task.exact_match" in problems[0]
    # Valid with the judge on (pairwise needs the base side).
    cfg = _recipe(tmp_path, gates=["judge.win_rate >= 0.6"], judge={"enabled": True, "base_url": "http://x/v1", "model": "m"})
    assert cfg.eval.gates == ["judge.win_rate >= 0.6"]


def test_syntax_error_in_recipe_gate(tmp_path):
    with pytest.raises(RecipeError) as err:
        _recipe(tmp_path, gates=["task.exact_match >"])
    assert err.value.problems == ["eval.gates: [0] 'task.exact_match >': the expression ends too early"]


def test_other_eval_config_problems_are_reported(tmp_path):
    with pytest.raises(RecipeError) as err:
        _recipe(tmp_path, metrics=["json_schema", "rules"], target="endpoint", label_regex="(", judge={"enabled": True})
    text = err.value.problems[0]
    for part in ["json_schema needs eval.json_schema", "rules needs eval.rules", "endpoint needs eval.endpoint",
                 "judge.enabled needs judge.base_url", "label_regex: invalid regex"]:
        assert part in text
