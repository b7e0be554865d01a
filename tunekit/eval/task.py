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

from tunekit.eval import metrics as M

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
        return M.extract_label(text, field=self.label_field, regex=self.label_regex)


def score(output: str, reference: str, spec: TaskSpec) -> dict:
    """One example's results for the chosen metrics."""
    result = M.score_example(output, reference, [m for m in spec.metrics if m in M.METRICS])
    if "normalized_match" in spec.metrics:
        result["normalized_match"] = M.normalized_match(output, reference)
    if "json_schema" in spec.metrics:
        result["json_schema"] = M.schema_valid(output, spec.validator)
    if "rouge_l" in spec.metrics:
        result["rouge_l"] = round(M.rouge_l(output, reference), 6)
    if "classification" in spec.metrics:
        expected, predicted = spec.label(reference), spec.label(output)
        result["label"] = {"reference": expected, "predicted": predicted if predicted is not None else NO_LABEL}
        result["correct_label"] = None if expected is None else predicted == expected
    if "rules" in spec.metrics:
        result["rules"] = {rule["name"]: M.rule_passes(output, rule) for rule in spec.rules}
    return result


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
              latency_s: list[float] | None = None, lengths: list[int] | None = None) -> dict:
    """Report numbers of one model: {"metrics": {name: value}, "per_field", "classification"}."""
    summary, per_field = M.aggregate(per_example, [m for m in spec.metrics if m in M.METRICS])
    for name in ("normalized_match", "json_schema"):
        if name in spec.metrics:
            summary[name] = _share(r[name] for r in per_example)
    if "rouge_l" in spec.metrics:
        summary["rouge_l"] = mean(r["rouge_l"] for r in per_example) if per_example else None
    extra: dict = {"per_field": per_field}
    if "classification" in spec.metrics:
        pairs = [(r["label"]["reference"], r["label"]["predicted"]) for r in per_example if r["label"]["reference"] is not None]
        report = classification_report(pairs)
        summary["accuracy"], summary["macro_f1"] = report["accuracy"], report["macro_f1"]
        extra["classification"] = {**report, "n": len(pairs)}
    if "rules" in spec.metrics:
        for rule in spec.rules:
            summary[f"rule.{rule['name']}"] = _share(r["rules"][rule["name"]] for r in per_example)
    if nll:
        tokens = sum(n for _, n in nll)
        summary["perplexity"] = math.exp(sum(loss for loss, _ in nll) / tokens) if tokens else None
    if latency_s:
        summary["latency_ms_mean"] = 1000 * mean(latency_s)
        summary["latency_ms_p50"] = 1000 * median(latency_s)
    if lengths:
        summary["output_tokens_mean"] = mean(lengths)
    return {"metrics": summary, **extra}


def metric_names(spec_metrics: list[str], rule_names: list[str], *, perplexity_possible: bool = True) -> list[str]:
    """Names under `task.` a gate may use, given the chosen metrics (validated before running)."""
    names = []
    for metric in spec_metrics:
        if metric == "field_accuracy":
            names += ["field_accuracy", "all_fields"]
        elif metric == "classification":
            names += ["accuracy", "macro_f1"]
        elif metric == "rules":
            names += [f"rule.{name}" for name in rule_names]
        elif metric != "perplexity" or perplexity_possible:
            names.append(metric)
    return names + ["latency_ms_mean", "latency_ms_p50", "output_tokens_mean"]
