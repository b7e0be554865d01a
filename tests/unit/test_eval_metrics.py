"""Task metrics beyond exact match: normalised match, ROUGE-L, schema, rules, labels, classification, aggregation."""

from __future__ import annotations

import pytest

from tunekit.eval.metrics import extract_label, normalized_match, rouge_l, rule_passes
from tunekit.eval.task import NO_LABEL, TaskSpec, aggregate, classification_report, outcome, score


def test_normalized_match():
    assert normalized_match("  Paris. ", "paris")
    assert normalized_match("The   Answer\nIS 42!", "the answer is 42")
    assert not normalized_match("Paris, France", "Paris")
    # JSON compares as data: key order and spacing do not matter, types do.
    assert normalized_match('{"b":1,"a":"x"}', '{"a": "x", "b": 1}')
    assert not normalized_match('{"a": 1.0}', '{"a": 1}')


def test_rouge_l_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS of "the cat sat" vs "the cat on the mat" = "the cat" (2): P = 2/3, R = 2/5.
    assert rouge_l("the cat sat", "the cat on the mat") == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert rouge_l("dog", "cat") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0


def test_rules_and_labels():
    assert rule_passes("Answer. Not legal advice.\n", {"ends_with": "Not legal advice."})
    assert not rule_passes("Not legal advice. Answer.", {"ends_with": "Not legal advice."})
    assert rule_passes("Ticket #123 done", {"regex": r"#\d+"})
    assert rule_passes("ok", {"contains": "o"}) and rule_passes("Dear x", {"starts_with": "Dear"})
    assert extract_label('{"category": "billing"}', field="category") == "billing"
    assert extract_label('{"category": ["a"]}', field="category") is None
    assert extract_label("not json", field="category") is None
    assert extract_label("Label: spam.", regex=r"Label: (\w+)") == "spam"
    assert extract_label("SPAM", regex=r"SPAM|HAM") == "SPAM"


def test_classification_report_by_hand():
    pairs = [("a", "a"), ("a", "b"), ("a", "a"), ("b", "b"), ("b", "(none)"), ("c", "a")]
    report = classification_report(pairs)
    assert report["accuracy"] == pytest.approx(3 / 6)
    # a: tp 2, predicted 3, support 3 -> P 2/3 R 2/3; b: tp 1, predicted 2, support 2 -> P 1/2 R 1/2; c: 0.
    assert report["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert report["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert report["confusion"] == {
        "a": {"a": 2, "b": 1, "c": 0, "(none)": 0},
        "b": {"a": 0, "b": 1, "c": 0, "(none)": 1},
        "c": {"a": 1, "b": 0, "c": 0, "(none)": 0},
    }


def test_task_score_and_aggregate_all_metrics():
    schema = {"type": "object", "properties": {"category": {"enum": ["billing", "shipping"]}}, "required": ["category"]}
    spec = TaskSpec(
        metrics=["exact_match", "normalized_match", "json_valid", "json_schema", "field_accuracy", "classification", "rules", "rouge_l",
                 "perplexity"],
        label_field="category", schema=schema, rules=[{"name": "brace", "ends_with": "}"}],
    )
    refs = ['{"category": "billing"}', '{"category": "shipping"}', '{"category": "shipping"}']
    outs = ['{"category": "billing"}', '{"category":"billing"}', "shipping please"]
    per = [score(o, r, spec) for o, r in zip(outs, refs)]
    assert [r["json_schema"] for r in per] == [True, True, False]
    assert [r["label"]["predicted"] for r in per] == ["billing", "billing", NO_LABEL]
    assert [r["correct_label"] for r in per] == [True, False, False]
    assert [r["rules"]["brace"] for r in per] == [True, True, False]
    assert [outcome(r) for r in per] == [True, False, False]
    result = aggregate(per, spec, nll=[(2.0, 2), (4.0, 2)], latency_s=[0.1, 0.3, 0.2], lengths=[5, 7, 3])
    metrics = result["metrics"]
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["normalized_match"] == pytest.approx(1 / 3)
    assert metrics["json_schema"] == pytest.approx(2 / 3) and metrics["rule.brace"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["perplexity"] == pytest.approx(__import__("math").exp(6 / 4))
    assert metrics["latency_ms_mean"] == pytest.approx(200) and metrics["latency_ms_p50"] == pytest.approx(200)
    assert metrics["output_tokens_mean"] == 5
    assert metrics["rouge_l"] == pytest.approx(sum(r["rouge_l"] for r in per) / 3)
    assert result["classification"]["n"] == 3
