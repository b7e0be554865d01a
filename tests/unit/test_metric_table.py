"""The metric table is the one list of task metrics: the recipe accepts its names, eval runs the scorers it
names, and the names a gate may use are exactly the numbers the report gives."""

from __future__ import annotations

import ast
import math
import typing
from pathlib import Path

import pytest

from tunekit.config import EvalConfig
from tunekit.config import metrics as table
from tunekit.eval import task


def test_recipe_accepts_exactly_the_tables_metrics():
    (item,) = typing.get_args(EvalConfig.model_fields["metrics"].annotation)
    assert typing.get_args(item) == tuple(table.METRICS)


def test_every_named_scorer_and_summary_is_a_function_of_the_eval_task_module():
    for info in table.METRICS.values():
        assert callable(getattr(task, info.summary)), info.summary
        assert info.scorer is None or callable(getattr(task, info.scorer)), info.scorer
    assert [info.name for info in table.METRICS.values() if info.scorer is None] == ["perplexity"]


def test_the_table_module_imports_nothing_but_the_standard_library():
    tree = ast.parse(Path(table.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert imported == {"__future__", "dataclasses", "typing"}


ALL = list(table.METRICS)
RULES = [{"name": "brace", "ends_with": "}"}, {"name": "short", "regex": r"^.{0,40}$"}]


@pytest.mark.parametrize("chosen", [ALL, ["exact_match"], ["rules", "perplexity"], ["classification", "field_accuracy"]])
def test_gate_names_are_exactly_the_reported_numbers(chosen):
    spec = task.TaskSpec(metrics=chosen, label_field="category", schema={"type": "object"}, rules=RULES)
    refs = ['{"category": "billing"}', '{"category": "shipping"}']
    outs = ['{"category": "billing"}', "shipping"]
    per_example = [task.score(o, r, spec) for o, r in zip(outs, refs)]
    reported = task.aggregate(
        per_example, spec, nll=[(1.0, 2), (3.0, 2)], latency_s=[0.1, 0.2], lengths=[4, 6], finish=["stop", "length"]
    )["metrics"]
    assert set(reported) == set(table.task_names(chosen, [r["name"] for r in RULES]))
    assert reported["truncated_share"] == 0.5
    if "perplexity" in chosen:
        assert reported["perplexity"] == pytest.approx(math.exp(4 / 4))


def test_an_endpoint_has_no_perplexity_to_gate_on():
    assert "perplexity" in table.task_names(["perplexity"], [])
    assert table.task_names(["perplexity", "exact_match"], [], logits=False) == [
        "exact_match", "latency_ms_mean", "latency_ms_p50", "output_tokens_mean", "truncated_share"
    ]


def test_directions():
    assert [table.direction_of(n) for n in ("perplexity", "latency_ms_p50", "accuracy", "rule.brace", "all_fields")] == [
        "lower", "lower", "higher", "higher", "higher"
    ]
    assert table.direction_of("output_tokens_mean") == "neither"
