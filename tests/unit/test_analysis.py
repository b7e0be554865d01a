"""Splits (stratified, grouped), label balance, consistency rules and data gates, up to
`tunekit run` stopping before training when a gate fails."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tunekit.config import AnalysisConfig, DataGates, parse_recipe
from tunekit.data import prepare_data
from tunekit.data.analyze import Labeler, check_rules, compile_rules, label_balance, label_counts
from tunekit.data.gates import DataGateError, evaluate_gates, raise_on_failed_gates, verdict_line
from tunekit.data.split import apportion, split_train
from tunekit.data.validate import Example
from tunekit.errors import DataError
from tunekit.runs import RunPaths, read_jsonl


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def chat(user: str, assistant: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **fields}


def ticket(i: int, category: str | None, **fields) -> dict:
    reply = json.dumps({"category": category, "id": i}) if category else f"no idea about ticket {i}"
    return chat(f"ticket {i}: something about {category or 'nothing'} number {i * 7919 % 1000}", reply, **fields)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make(tmp_path: Path, rows: list, **data) -> tuple:
    write_rows(tmp_path / "train.jsonl", rows)
    data = {"train": "train.jsonl", "on_invalid": "quarantine", **data}
    data.setdefault("clean", {}).setdefault("near_dedup", False)  # the crafted rows are alike on purpose
    recipe = parse_recipe({"name": "t", "output_dir": str(tmp_path / "runs"), "data": data}, base_dir=tmp_path)
    return recipe, RunPaths(recipe.run_dir)


def as_examples(rows: list[dict]) -> list[Example]:
    return [Example("train", "train.jsonl", i + 1, r["messages"], raw=json.dumps(r)) for i, r in enumerate(rows)]


# 60 billing, 30 shipping, 10 without a label.
CRAFTED = [ticket(i, "billing") for i in range(60)] + [ticket(i, "shipping") for i in range(60, 90)] + [ticket(i, None) for i in range(90, 100)]


# ---------------------------------------------------------------- splits


def test_apportion_is_exact_and_proportional():
    assert apportion(10, {"a": 60, "b": 30, "c": 10}, {"a": 60, "b": 30, "c": 10}) == {"a": 6, "b": 3, "c": 1}
    # 7 over 3 equal strata: remainders tie, names break the tie; capacity is respected.
    assert apportion(7, {"a": 5, "b": 5, "c": 5}, {"a": 5, "b": 5, "c": 5}) == {"a": 3, "b": 2, "c": 2}
    assert apportion(4, {"a": 1, "b": 9}, {"a": 0, "b": 9}) == {"a": 0, "b": 4}


def test_stratified_split_keeps_label_shares_exactly(tmp_path, smol_tokenizer):
    recipe, run = make(tmp_path, CRAFTED, split="stratified", val_fraction=0.1, test_fraction=0.1, analysis={"label_field": "category"})
    report = prepare_data(recipe, run, smol_tokenizer)
    assert report["splits"]["train"]["labels"] == {"billing": 48, "shipping": 24, "unlabelled": 8}
    assert report["splits"]["val"]["labels"] == {"billing": 6, "shipping": 3, "unlabelled": 1}
    assert report["splits"]["test"]["labels"] == {"billing": 6, "shipping": 3, "unlabelled": 1}
    assert [report["splits"][s]["rows"] for s in ("train", "val", "test")] == [80, 10, 10]
    # The written files hold what the report says.
    val_labels = Counter(json.loads(r["messages"][-1]["content"]).get("category") if r["messages"][-1]["content"].startswith("{") else None for r in read_jsonl(run.split("val")))
    assert val_labels == {"billing": 6, "shipping": 3, None: 1}


def test_stratified_split_by_regex_is_deterministic_by_seed():
    rows = [chat(f"q{i}", f"Answer: {'yes' if i % 4 else 'no'} ({i})") for i in range(40)]
    labeler = Labeler(AnalysisConfig(label_regex=r"Answer: (\w+)"))
    examples = as_examples(rows)
    strata = [labeler(e) for e in examples]
    assert Counter(strata) == {"yes": 30, "no": 10}

    def lines(seed: int) -> dict:
        return {k: [e.line for e in v] for k, v in split_train(examples, 0.2, 0.1, seed, strata=strata).items()}

    assert lines(3) == lines(3)
    assert lines(3) != lines(4)
    split = lines(3)
    val_labels = Counter(strata[line - 1] for line in split["val"])
    test_labels = Counter(strata[line - 1] for line in split["test"])
    assert val_labels == {"yes": 6, "no": 2} and test_labels == {"yes": 3, "no": 1}
    assert sorted(sum(split.values(), [])) == list(range(1, 41))


GROUP_SIZES = [1, 2, 3, 5, 8, 1, 1, 4, 6, 2, 3, 7, 1, 2, 9, 3, 4, 1, 2, 5]


@pytest.mark.parametrize("seed", range(8))
def test_grouped_split_never_splits_a_group(seed):
    rows, groups = [], []
    for g, size in enumerate(GROUP_SIZES):
        for k in range(size):
            rows.append(chat(f"customer {g} asks {k}", f"reply {g}-{k}"))
            groups.append(f"c{g}")
    examples = as_examples(rows)
    split = split_train(examples, 0.2, 0.1, seed, groups=groups)

    where = {}
    for name, members in split.items():
        for e in members:
            assert where.setdefault(groups[e.line - 1], name) == name, f"group {groups[e.line - 1]} spans two splits"
    assert sorted(e.line for members in split.values() for e in members) == list(range(1, len(rows) + 1))
    # Fractions are met as closely as group sizes allow: within the largest group of the target.
    n = len(rows)
    assert split["val"] and split["test"] and split["train"]
    assert abs(len(split["val"]) - round(0.2 * n)) <= max(GROUP_SIZES)
    assert abs(len(split["test"]) - round(0.1 * n)) <= max(GROUP_SIZES)
    assert split == split_train(examples, 0.2, 0.1, seed, groups=groups)


def test_grouped_split_keeps_identical_examples_of_two_groups_together():
    rows = [chat("same question", "same answer"), chat("same question", "same answer")] + [chat(f"q{i}", "a") for i in range(18)]
    groups = ["a", "b"] + [f"g{i}" for i in range(18)]
    for seed in range(10):
        split = split_train(as_examples(rows), 0.3, 0.0, seed, groups=groups)
        home = [name for name, members in split.items() for e in members if e.line in (1, 2)]
        assert len(set(home)) == 1


def test_grouped_prepare_quarantines_rows_without_the_key(tmp_path, smol_tokenizer):
    rows = [ticket(i, "billing", customer=f"c{i % 7}") for i in range(40)]
    rows[5].pop("customer")
    rows[9]["customer"] = ""
    recipe, run = make(tmp_path, rows, split="grouped", group_key="customer", val_fraction=0.2)
    report = prepare_data(recipe, run, smol_tokenizer)
    assert [(q["line"], q["reason"]) for q in read_jsonl(run.quarantine)] == [(6, "missing_group_key"), (10, "missing_group_key")]
    assert report["accounting"]["ok"]
    customer_of = {i + 1: r.get("customer") for i, r in enumerate(rows)}
    homes: dict = {}
    for name in ("train", "val"):
        for row in read_jsonl(run.split(name)):
            assert homes.setdefault(customer_of[row["meta"]["line"]], name) == name
    assert set(homes.values()) == {"train", "val"}


# ---------------------------------------------------------------- labels and rules


def test_label_balance_numbers_and_warning():
    examples = as_examples(CRAFTED)
    counts = label_counts(examples, Labeler(AnalysisConfig(label_field="category")))
    balance = label_balance(counts, max_share=0.5)
    assert balance["counts"] == {"billing": 60, "shipping": 30}
    assert balance["shares"] == {"billing": 0.6667, "shipping": 0.3333}
    assert (balance["labelled"], balance["unlabelled"], balance["largest"], balance["largest_share"]) == (90, 10, "billing", 0.6667)
    assert balance["warning"] == (
        "label 'billing' holds 67% of the labelled training rows (data.analysis.max_label_share is 50%); "
        "the model may learn to always answer it"
    )
    assert label_balance(counts, max_share=0.7)["warning"] is None


def test_each_rule_kind_lists_its_failing_rows(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["category"], "properties": {"category": {"enum": ["billing", "shipping"]}}}))
    rows = [
        chat("a", '{"category": "billing"} Not advice.'),  # 1: not JSON
        chat("b", '{"category": "refund"}'),  # 2: JSON, fails the schema enum
        chat("c", '{"id": 3}'),  # 3: JSON, misses `category`
        chat("d", '{"category": "shipping"}'),  # 4: passes json and schema
    ]
    recipe = parse_recipe(
        {
            "data": {
                "train": "train.jsonl",
                "analysis": {
                    "rules": [
                        {"name": "has category", "regex": r'"category":'},
                        {"name": "disclaimer", "ends_with": "Not advice."},
                        {"name": "is json", "json": True},
                        {"name": "schema", "json_schema": "schema.json"},
                    ]
                },
            }
        },
        base_dir=tmp_path,
    )
    results = check_rules(as_examples(rows), compile_rules(recipe.data.analysis.rules))
    summary = {r["name"]: (r["kind"], r["passed"], r["failed"], [f["line"] for f in r["failing"]]) for r in results}
    assert summary == {
        "has category": ("regex", 3, 1, [3]),
        "disclaimer": ("ends_with", 1, 3, [2, 3, 4]),
        "is json": ("json", 3, 1, [1]),
        "schema": ("json_schema", 1, 3, [1, 2, 3]),
    }
    schema_failures = {f["line"]: f["detail"] for f in results[3]["failing"]}
    assert schema_failures[2] == "message 2: schema: category: 'refund' is not one of ['billing', 'shipping']"
    assert schema_failures[3] == "message 2: schema: (root): 'category' is a required property"
    assert results[0]["failing"][0] == {"source": "train.jsonl", "line": 3, "detail": "message 2: does not match '\"category\":'"}


def test_bad_rule_regex_and_schema_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"rules\[r\]\.regex: invalid regex"):
        compile_rules(parse_recipe({"data": {"train": "t", "analysis": {"rules": [{"name": "r", "regex": "("}]}}}).data.analysis.rules)
    (tmp_path / "bad.json").write_text('{"type": 12}')
    rules = parse_recipe({"data": {"train": "t", "analysis": {"rules": [{"name": "s", "json_schema": "bad.json"}]}}}, base_dir=tmp_path).data.analysis.rules
    with pytest.raises(DataError, match="not a valid JSON schema"):
        compile_rules(rules)


def test_analysis_lands_in_the_report(tmp_path, smol_tokenizer):
    rows = [*CRAFTED[:30], {"messages": [{"role": "system", "content": "be brief"}, *ticket(200, "shipping")["messages"], {"role": "user", "content": "and?"}, {"role": "assistant", "content": "done"}]}]
    analysis = {"label_field": "category", "max_label_share": 0.5, "rules": [{"name": "json", "json": True}]}
    recipe, run = make(tmp_path, rows, val_fraction=0.0, analysis=analysis)
    report = prepare_data(recipe, run, smol_tokenizer)
    on_disk = read_json(run.data_report)
    assert on_disk["analysis"] == report["analysis"]
    shape = report["analysis"]["shape"]
    assert shape["turns"]["histogram"] == {"1": 30, "2": 1} and shape["with_system_prompt"] == 1
    assert shape["system_prompt_share"] == round(1 / 31, 4)
    labels = report["analysis"]["labels"]
    assert labels["counts"] == {"billing": 30} and labels["unlabelled"] == 1  # the 2-turn row ends in "done"
    (rule,) = report["analysis"]["rules"]
    assert (rule["passed"], rule["failed"], rule["failing"][0]["line"]) == (30, 1, 31)
    assert len(report["analysis"]["warnings"]) == 2


# ---------------------------------------------------------------- gates


def _report_with_problems(tmp_path, smol_tokenizer) -> dict:
    """100 lines: 70 distinct kept rows, 20 exact duplicates, 10 broken lines; labels 50/20."""
    rows = [ticket(i, "billing" if i < 50 else "shipping") for i in range(70)]
    rows += [rows[i] for i in range(20)] + ["{broken"] * 10
    recipe, run = make(tmp_path, rows, val_fraction=0.0, analysis={"label_field": "category"})
    return prepare_data(recipe, run, smol_tokenizer)


GATE_CASES = [
    ({"min_examples": 70}, True, None),
    ({"min_examples": 71}, False, "min_examples: 70 < 71 (training rows)"),
    ({"max_duplicate_share": 0.2}, True, None),
    ({"max_duplicate_share": 0.19}, False, "max_duplicate_share: 0.2 > 0.19 (20 of 100 rows)"),
    ({"max_quarantine_share": 0.1}, True, None),
    ({"max_quarantine_share": 0.05}, False, "max_quarantine_share: 0.1 > 0.05 (10 of 100 rows, duplicates not counted)"),
    ({"max_label_share": 0.75}, True, None),
    ({"max_label_share": 0.7}, False, "max_label_share: 0.7143 > 0.7 (largest label 'billing')"),
    ({"require_diversity": "GOOD"}, False, "require_diversity: no diversity result: enable data.analysis.diversity"),
]


def test_each_gate_passes_and_fails_with_its_value_and_limit(tmp_path, smol_tokenizer):
    report = _report_with_problems(tmp_path, smol_tokenizer)
    assert report["gates"] == []
    for gate, passed, message in GATE_CASES:
        (result,) = evaluate_gates(DataGates(**gate), report)
        name, limit = next(iter(gate.items()))
        assert (result["gate"], result["limit"], result["passed"]) == (name, limit, passed), gate
        if passed:
            assert verdict_line([result]) == "data verdict: PASS"
            raise_on_failed_gates({"gates": [result]})
        else:
            assert verdict_line([result]) == f"data verdict: FAIL: {message}"
            with pytest.raises(DataGateError) as failure:
                raise_on_failed_gates({"gates": [result]})
            assert message in failure.value.message


def test_diversity_and_label_gates_read_their_sections():
    report = {"files": [{"lines": 10, "blank": 0}], "quarantine": {"by_reason": {}, "total": 0}, "splits": {"train": {"rows": 10}}}
    gates = DataGates(require_diversity="GOOD", max_label_share=0.5)
    failed = evaluate_gates(gates, report)
    assert [g["passed"] for g in failed] == [False, False]
    assert failed[0]["message"] == "no labels: set data.analysis.label_field or data.analysis.label_regex"
    report["analysis"] = {"diversity": {"verdict": "RISKY"}, "labels": {"largest": "a", "largest_share": 0.5}}
    assert [(g["value"], g["passed"]) for g in evaluate_gates(gates, report)] == [(0.5, True), ("RISKY", False)]
    report["analysis"]["diversity"]["verdict"] = "GOOD"
    assert all(g["passed"] for g in evaluate_gates(gates, report))


def _recipe_file(tmp_path: Path, model_dir: Path, gates: str) -> Path:
    write_rows(tmp_path / "train.jsonl", [ticket(i, "billing") for i in range(12)])
    recipe = f"base_model: {model_dir}\ntrain:\n  max_steps: 1\n  batch_size: 2\ndata:\n  train: train.jsonl\n  gates:\n{gates}"
    (tmp_path / "recipe.yaml").write_text(recipe, encoding="utf-8")
    return tmp_path / "recipe.yaml"


def test_run_stops_before_training_when_a_gate_fails(tmp_path, tiny_model_dir):
    from tunekit.config import load_recipe
    from tunekit.pipeline import run_pipeline

    recipe = load_recipe(_recipe_file(tmp_path, tiny_model_dir, "    min_examples: 500\n    max_duplicate_share: 0.5\n"))
    run = RunPaths(recipe.run_dir)
    with pytest.raises(DataGateError) as failure:
        run_pipeline(recipe, run, stages=("prepare", "train"))
    assert "min_examples: 11 < 500" in failure.value.message and "max_duplicate_share" not in failure.value.message
    assert not run.adapter_dir.exists()
    report = read_json(run.data_report)  # the report is written, with the failed gate in it
    assert [(g["gate"], g["passed"]) for g in report["gates"]] == [("min_examples", False), ("max_duplicate_share", True)]


def test_cli_prepare_prints_the_verdict_and_exits_1_on_a_failed_gate(tmp_path, tiny_model_dir, monkeypatch):
    from tunekit.cli import data as data_cli

    path = _recipe_file(tmp_path, tiny_model_dir, "    min_examples: 5\n")
    root = typer.Typer()
    root.add_typer(data_cli.app, name="data")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    result = runner.invoke(root, ["data", "prepare", str(path)])
    assert result.exit_code == 0, result.output
    assert "data verdict: PASS" in result.output

    result = runner.invoke(root, ["data", "prepare", str(path), "--set", "data.gates.min_examples=50"])
    assert result.exit_code == 1 and isinstance(result.exception, DataGateError)
    assert "data verdict: FAIL: min_examples: 11 < 50 (training rows)" in result.output
