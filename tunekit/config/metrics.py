"""The metric table: every task metric a recipe may choose, said once.

Recipe validation (what `eval.metrics` accepts, which `task.` names a gate may use), the eval
stage (which function scores a metric, which report numbers it adds, which way is better) and the
gates all read this table. It imports nothing, so any layer may read it (the serving side's online
checks too). Scorers are named, not imported: the functions live in `tunekit.eval.task`, and a
test checks that every name here resolves there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower", "neither"]


@dataclass(frozen=True)
class MetricInfo:
    name: str  # as written in eval.metrics
    description: str
    direction: Direction  # which way is better, for every number the metric reports
    reports: tuple[str, ...]  # its numbers under `task.` in eval_report.json; `rule.{rule}` once per eval rule
    scorer: str | None  # per-example function in tunekit.eval.task, (output, reference, spec) -> results; None: none
    summary: str  # function in tunekit.eval.task turning per-example results into the reported numbers
    needs_logits: bool = False  # scored from the model's token log-probabilities: not on an endpoint


_TABLE = (
    MetricInfo("exact_match", "The reply equals the reference (whitespace at the ends aside).", "higher",
               ("exact_match",), "score_exact_match", "summarize_share"),
    MetricInfo("json_valid", "The reply is exactly one JSON object or array (no Markdown fence, no prose around it).", "higher",
               ("json_valid",), "score_json_valid", "summarize_share"),
    MetricInfo("field_accuracy", "Share of the reference's JSON fields the reply gets right (and `all_fields`, the share of replies "
               "with every field right).", "higher", ("field_accuracy", "all_fields"), "score_field_accuracy", "summarize_fields"),
    MetricInfo("normalized_match", "Same answer up to case, spacing and end punctuation; JSON is compared as data.", "higher",
               ("normalized_match",), "score_normalized_match", "summarize_share"),
    MetricInfo("json_schema", "The reply parses as JSON and validates against `eval.json_schema`.", "higher",
               ("json_schema",), "score_json_schema", "summarize_share"),
    MetricInfo("rouge_l", "ROUGE-L F1 of reply and reference on lower-cased words.", "higher",
               ("rouge_l",), "score_rouge_l", "summarize_mean"),
    MetricInfo("classification", "Labels taken from reply and reference: accuracy and macro-F1 (per-class F1 and the "
               "confusion matrix in the report).", "higher", ("accuracy", "macro_f1"), "score_classification", "summarize_classification"),
    MetricInfo("rules", "Pass rate of each `eval.rules` format rule.", "higher",
               ("rule.{rule}",), "score_rules", "summarize_rules"),
    MetricInfo("perplexity", "Perplexity of the reference answers under the model (local models only).", "lower",
               ("perplexity",), None, "summarize_perplexity", needs_logits=True),
)
# In the order their numbers appear in a report (and in each example's results).
METRICS: dict[str, MetricInfo] = {info.name: info for info in _TABLE}
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]  # what eval.metrics accepts

# Reported for every eval whatever the chosen metrics: speed and length of the replies.
# truncated_share: answers cut at eval.max_new_tokens (a cut JSON answer scores like a wrong one).
ALWAYS_REPORTED: dict[str, Direction] = {
    "latency_ms_mean": "lower", "latency_ms_p50": "lower", "output_tokens_mean": "neither", "truncated_share": "lower",
}


def task_names(chosen: list[str], rule_names: list[str], *, logits: bool = True) -> list[str]:
    """Names under `task.` an eval with these metrics reports (and a gate may use), in the recipe's order."""
    names: list[str] = []
    for metric in chosen:
        info = METRICS[metric]
        if info.needs_logits and not logits:
            continue
        for name in info.reports:
            names += [name.format(rule=rule) for rule in rule_names] if "{rule}" in name else [name]
    return names + list(ALWAYS_REPORTED)


def direction_of(report_name: str) -> Direction:
    """Which way is better for one reported task number (`accuracy`, `rule.disclaimer`, `latency_ms_p50`)."""
    if report_name in ALWAYS_REPORTED:
        return ALWAYS_REPORTED[report_name]
    for info in _TABLE:
        for name in info.reports:
            if report_name == name or ("{rule}" in name and report_name.startswith(name.split("{")[0])):
                return info.direction
    return "higher"
