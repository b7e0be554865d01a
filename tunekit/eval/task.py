"""Task metrics chosen per eval set: per-example results, and their aggregation into report numbers.

`score` gives one example's results (booleans, a ROUGE-L value, a label); `aggregate` turns the
per-example results of one model into the numbers of eval_report.json. The report is a pure
function of the saved per-example outputs, so anyone can recount it from predictions.jsonl.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median

from tunekit.config.metrics import METRICS, MetricInfo
from tunekit.eval.metrics import (
    exact_match, extract_label, field_matches, json_valid, normalized_match, rouge_l, rule_passes, schema_valid,
)

NO_LABEL = "(none)"  # the predicted label when a reply has none (not JSON, no match)


@dataclass
class TaskSpec:
    """What to compute for one eval set (from the recipe's eval section)."""

    metrics: list[str]
    label_field: str | None = None
    label_regex: str | None = None
    schema: dict | None = None
    rules: list[dict] = field(default_factory=list)
    _validator: object = field(default=None, repr=False)

    @property
    def validator(self):
        if self._validator is None and self.schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.schema)
            self._validator = cls(self.schema)
        return self._validator

    @classmethod
    def from_recipe(cls, recipe) -> "TaskSpec":
        cfg = recipe.eval
        label_field = cfg.label_field or (None if cfg.label_regex else recipe.data.analysis.label_field)
        label_regex = cfg.label_regex or (None if label_field else recipe.data.analysis.label_regex)
        schema = json.loads(Path(cfg.json_schema).read_text(encoding="utf-8")) if cfg.json_schema else None
        rules = [rule.model_dump(exclude_none=True) for rule in cfg.rules]
        return cls(list(cfg.metrics), label_field, label_regex, schema, rules)

    def label(self, text: str) -> str | None:
        return extract_label(text, field=self.label_field, regex=self.label_regex)


def score(output: str, reference: str, spec: TaskSpec) -> dict:
    """One example's results for the chosen metrics, each from the scorer the metric table names."""
    result: dict = {}
    for info in _chosen(spec):
        if info.scorer is not None:
            result.update(globals()[info.scorer](output, reference, spec))
    return result


def _chosen(spec: TaskSpec) -> list[MetricInfo]:
    """The chosen metrics in the table's order (the order of every example's results and of the report)."""
    return [info for name, info in METRICS.items() if name in spec.metrics]


# Per-example scorers, named by the metric table: (output, reference, spec) -> results of one example.


def score_exact_match(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"exact_match": exact_match(output, reference)}


def score_json_valid(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"json_valid": json_valid(output)}


def score_field_accuracy(output: str, reference: str, spec: TaskSpec) -> dict:
    """Per reference field right or not (None when the reference is no JSON object), and all of them."""
    fields = field_matches(output, reference)
    return {"fields": fields, "all_fields": None if fields is None else all(fields.values())}


def score_normalized_match(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"normalized_match": normalized_match(output, reference)}


def score_json_schema(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"json_schema": schema_valid(output, spec.validator)}


def score_rouge_l(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"rouge_l": round(rouge_l(output, reference), 6)}


def score_classification(output: str, reference: str, spec: TaskSpec) -> dict:
    expected, predicted = spec.label(reference), spec.label(output)
    return {
        "label": {"reference": expected, "predicted": predicted if predicted is not None else NO_LABEL},
        "correct_label": None if expected is None else predicted == expected,
    }


def score_rules(output: str, reference: str, spec: TaskSpec) -> dict:
    return {"rules": {rule["name"]: rule_passes(output, rule) for rule in spec.rules}}


def outcome(result: dict) -> bool | None:
    """Was the example answered right? The strictest chosen check that applies decides."""
    for key in ("exact_match", "all_fields", "correct_label", "normalized_match", "json_valid"):
        if result.get(key) is not None:
            return bool(result[key])
    return None


def _share(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def classification_report(pairs: list[tuple[str, str]]) -> dict:
    """accuracy, macro-F1 over the reference classes, per-class precision/recall/F1, confusion matrix."""
    classes = sorted({ref for ref, _ in pairs})
    predicted_classes = sorted({pred for _, pred in pairs} - set(classes))
    confusion = {ref: {pred: 0 for pred in classes + predicted_classes} for ref in classes}
    for ref, pred in pairs:
        confusion[ref][pred] += 1
    per_class = {}
    for name in classes:
        tp = confusion[name][name]
        predicted = sum(row[name] for row in confusion.values())
        support = sum(confusion[name].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {
        "accuracy": _share([ref == pred for ref, pred in pairs]),
        "macro_f1": mean(c["f1"] for c in per_class.values()) if per_class else None,
        "per_class": per_class,
        "confusion": confusion,
    }


def aggregate(per_example: list[dict], spec: TaskSpec, *, nll: list[tuple[float, int]] | None = None,
              latency_s: list[float] | None = None, lengths: list[int] | None = None,
              finish: list[str] | None = None) -> dict:
    """Report numbers of one model: {"metrics": {name: value}, "per_field", "classification"}."""
    summary: dict = {}
    extra: dict = {"per_field": {}}
    for info in _chosen(spec):
        numbers, more = globals()[info.summary](info.name, per_example, spec, nll)
        summary.update(numbers)
        extra.update(more)
    if latency_s:
        summary["latency_ms_mean"] = 1000 * mean(latency_s)
        summary["latency_ms_p50"] = 1000 * median(latency_s)
    if lengths:
        summary["output_tokens_mean"] = mean(lengths)
    if finish:
        summary["truncated_share"] = sum(reason == "length" for reason in finish) / len(finish)
    return {"metrics": summary, **extra}


# Summaries, named by the metric table: (metric, per-example results, spec, reference NLL) ->
# (numbers reported under `task.`, other report parts).


def summarize_share(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    """The share of examples for which the metric's check holds."""
    return {name: _share(r[name] for r in per_example)}, {}


def summarize_mean(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    return {name: mean(r[name] for r in per_example) if per_example else None}, {}


def summarize_fields(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    """field_accuracy: the share of all (example, reference field) pairs answered right, over the examples
    whose reference is a JSON object (None when none is); all_fields: share of those with every field right."""
    with_fields = [r["fields"] for r in per_example if r["fields"] is not None]
    numbers = {
        "field_accuracy": _share(ok for fields in with_fields for ok in fields.values()),
        "all_fields": _share(r["all_fields"] for r in per_example),
    }
    names = list(dict.fromkeys(key for fields in with_fields for key in fields))
    per_field = {key: _share(fields[key] for fields in with_fields if key in fields) for key in names}
    return numbers, {"per_field": per_field}


def summarize_classification(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    pairs = [(r["label"]["reference"], r["label"]["predicted"]) for r in per_example if r["label"]["reference"] is not None]
    report = classification_report(pairs)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}, {"classification": {**report, "n": len(pairs)}}


def summarize_rules(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    return {f"rule.{rule['name']}": _share(r["rules"][rule["name"]] for r in per_example) for rule in spec.rules}, {}


def summarize_perplexity(name: str, per_example: list[dict], spec: TaskSpec, nll) -> tuple[dict, dict]:
    """exp(total reference NLL / reference tokens); nothing when no NLL was taken (an endpoint target)."""
    if not nll:
        return {}, {}
    tokens = sum(n for _, n in nll)
    return {"perplexity": math.exp(sum(loss for loss, _ in nll) / tokens) if tokens else None}, {}
