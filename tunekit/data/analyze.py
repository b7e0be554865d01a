"""Analysis of the prepared examples: labels and their balance, turn counts, system prompts, and
the recipe's consistency rules over every assistant reply."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunekit.config import AnalysisConfig, ConsistencyRule
from tunekit.data.validate import Example
from tunekit.errors import DataError

UNLABELLED = "unlabelled"
_LISTED_ROWS = 50


def replies(example: Example) -> list[tuple[int, str]]:
    """(1-based message number, content) of the replies the model learns: every assistant message
    of a chat, the chosen answer of a preference pair, nothing of raw pre-training text."""
    kind = getattr(example, "kind", "chat")
    if kind == "text":
        return []
    first = len(example.messages) - example.n_chosen if kind == "preference" else 0
    return [(i + 1, m["content"]) for i, m in enumerate(example.messages) if i >= first and m["role"] == "assistant"]


# ---------------------------------------------------------------- labels


class Labeler:
    """The label of a row: a key of its JSON assistant reply, or a regex over that reply."""

    def __init__(self, analysis: AnalysisConfig):
        self.field = analysis.label_field
        self.regex = _compile(analysis.label_regex, "data.analysis.label_regex") if analysis.label_regex else None

    @property
    def configured(self) -> bool:
        return bool(self.field or self.regex)

    def __call__(self, example: Example) -> str | None:
        answers = replies(example)
        if not answers:
            return None
        reply = answers[-1][1]  # the final reply carries the label (a classification's answer)
        if self.field:
            try:
                parsed = json.loads(reply)
            except (json.JSONDecodeError, RecursionError):
                return None
            value = parsed.get(self.field) if isinstance(parsed, dict) else None
            if value is None or isinstance(value, (dict, list)):
                return None
            return value if isinstance(value, str) else json.dumps(value)
        if self.regex:
            match = self.regex.search(reply)
            if match is None:
                return None
            return match.group(1) if self.regex.groups else match.group(0)
        return None


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DataError(f"{where}: invalid regex {pattern!r}: {exc}", hint="fix the regex in the recipe") from None


def label_counts(examples: list[Example], labeler: Labeler) -> Counter:
    """Rows per label; rows without one count under `unlabelled`."""
    return Counter(labeler(e) or UNLABELLED for e in examples)


def label_balance(counts: Counter, max_share: float) -> dict:
    """Counts and shares per label (largest first) and a warning when one label dominates.

    The unlabelled rows are reported but left out of the shares: they are not a class."""
    labelled = {label: n for label, n in counts.items() if label != UNLABELLED}
    total = sum(labelled.values())
    ordered = sorted(labelled.items(), key=lambda kv: (-kv[1], kv[0]))
    shares = {label: round(n / total, 4) for label, n in ordered} if total else {}
    largest = ordered[0] if ordered else None
    largest_share = round(largest[1] / total, 4) if largest else None
    warning = None
    if largest and largest[1] / total > max_share:
        warning = (
            f"label '{largest[0]}' holds {largest_share:.0%} of the labelled training rows "
            f"(data.analysis.max_label_share is {max_share:.0%}); the model may learn to always answer it"
        )
    return {
        "counts": dict(ordered),
        "shares": shares,
        "labelled": total,
        "unlabelled": counts.get(UNLABELLED, 0),
        "largest": largest[0] if largest else None,
        "largest_share": largest_share,
        "max_label_share": max_share,
        "warning": warning,
    }


# ---------------------------------------------------------------- shape of the conversations


def conversation_shape(examples: list[Example]) -> dict:
    """Turns per row (a turn is one user message and its reply) and the share with a system prompt.
    Raw text rows have no turns and are left out."""
    examples = [e for e in examples if getattr(e, "kind", "chat") != "text"]
    turns = Counter(sum(1 for m in e.messages if m["role"] == "user") for e in examples)
    with_system = sum(1 for e in examples if e.messages and e.messages[0]["role"] == "system")
    rows = len(examples)
    return {
        "rows": rows,
        "turns": {
            "histogram": {str(k): turns[k] for k in sorted(turns)},
            "mean": round(sum(k * n for k, n in turns.items()) / rows, 2) if rows else None,
            "max": max(turns) if turns else None,
        },
        "with_system_prompt": with_system,
        "system_prompt_share": round(with_system / rows, 4) if rows else None,
    }


# ---------------------------------------------------------------- consistency rules


@dataclass
class _RuleCheck:
    rule: ConsistencyRule
    kind: str
    check: Any  # reply -> None when it passes, else a short reason

    def failure(self, example: Example) -> str | None:
        for number, content in replies(example):
            if (problem := self.check(content)) is not None:
                return f"message {number}: {problem}"
        return None


def _load_schema(rule: ConsistencyRule):
    import jsonschema

    where = f"data.analysis.rules[{rule.name}].json_schema"
    try:
        schema = json.loads(rule.json_schema.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{where}: file not found: {rule.json_schema}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: {rule.json_schema} is not a readable JSON file: {exc}") from None
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise DataError(f"{where}: {rule.json_schema} is not a valid JSON schema: {exc.message}") from None
    return validator_class(schema)


def _parse_json(reply: str) -> tuple[Any, str | None]:
    try:
        return json.loads(reply), None
    except (json.JSONDecodeError, RecursionError) as exc:
        return None, f"not JSON ({getattr(exc, 'msg', 'too deeply nested')})"


def _rule_check(rule: ConsistencyRule) -> _RuleCheck:
    if rule.regex is not None:
        pattern = _compile(rule.regex, f"data.analysis.rules[{rule.name}].regex")
        return _RuleCheck(rule, "regex", lambda reply: None if pattern.search(reply) else f"does not match {rule.regex!r}")
    if rule.ends_with is not None:
        suffix = rule.ends_with
        # Trailing whitespace is not part of a reply's meaning; "ends with the disclaimer" ignores it.
        return _RuleCheck(rule, "ends_with", lambda reply: None if reply.rstrip().endswith(suffix.rstrip()) else f"does not end with {suffix!r}")
    if rule.parses_as_json:
        return _RuleCheck(rule, "json", lambda reply: _parse_json(reply)[1])
    validator = _load_schema(rule)

    def against_schema(reply: str) -> str | None:
        value, problem = _parse_json(reply)
        if problem:
            return problem
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        path = "/".join(map(str, error.absolute_path)) or "(root)"
        return f"schema: {path}: {error.message}"

    return _RuleCheck(rule, "json_schema", against_schema)


def compile_rules(rules: list[ConsistencyRule]) -> list[_RuleCheck]:
    """Every rule ready to run; a bad regex or schema is a DataError naming the rule."""
    return [_rule_check(rule) for rule in rules]


def check_rules(examples: list[Example], checks: list[_RuleCheck]) -> list[dict]:
    """Per rule: rows checked, passed, failed, and the first failing rows with file:line and why."""
    checked = [e for e in examples if replies(e)]
    results = []
    for check in checks:
        failing = []
        for example in checked:
            if (problem := check.failure(example)) is not None:
                failing.append({"source": example.source, "line": example.line, "detail": problem})
        results.append(
            {
                "name": check.rule.name,
                "kind": check.kind,
                "checked": len(checked),
                "passed": len(checked) - len(failing),
                "failed": len(failing),
                "failing": failing[:_LISTED_ROWS],
            }
        )
    return results


# ---------------------------------------------------------------- everything together


def analyze(analysis: AnalysisConfig, splits: dict[str, list[Example]]) -> dict:
    """The `analysis` section of the report. Labels are judged on train (what the model learns
    from) and counted per split; shape and rules cover every kept row."""
    # In file order, so the failing rows are listed the way the user reads the file.
    kept = sorted((e for rows in splits.values() for e in rows), key=lambda e: (e.source, e.line))
    result: dict = {"shape": conversation_shape(kept), "warnings": []}
    labeler = Labeler(analysis)
    if labeler.configured:
        per_split = {name: label_counts(rows, labeler) for name, rows in splits.items()}
        result["labels"] = label_balance(per_split["train"], analysis.max_label_share)
        result["labels"]["source"] = f"label_field: {analysis.label_field}" if analysis.label_field else f"label_regex: {analysis.label_regex}"
        result["labels"]["per_split"] = {name: dict(sorted(c.items())) for name, c in per_split.items()}
        if result["labels"]["warning"]:
            result["warnings"].append(result["labels"]["warning"])
    result["rules"] = check_rules(kept, compile_rules(analysis.rules))
    for rule in result["rules"]:
        if rule["failed"]:
            result["warnings"].append(f"rule '{rule['name']}' ({rule['kind']}): {rule['failed']} of {rule['checked']} rows fail")
    return result


def add_analysis(report: dict, analysis: AnalysisConfig, splits: dict[str, list[Example]]) -> None:
    """Put the analysis into `report["analysis"]` (kept beside other sections there, e.g. diversity)
    and each split's label counts into `report["splits"][name]["labels"]`."""
    result = analyze(analysis, splits)
    report.setdefault("analysis", {}).update(result)
    per_split = result.get("labels", {}).get("per_split", {})
    for name, counts in per_split.items():
        if name in report.get("splits", {}):
            report["splits"][name]["labels"] = counts


# ---------------------------------------------------------------- console summary


def _top(counts: dict, shown: int = 6) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k}: {v}" for k, v in items[:shown])
    return text + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")


def summary_lines(report: dict) -> list[tuple[str, str]]:
    """(style, text) lines for the console: PII, shape, labels, rules, warnings and the verdict."""
    from tunekit.data.gates import verdict_line

    lines: list[tuple[str, str]] = []
    pii = report.get("pii")
    if pii and pii["mode"] != "off" and pii.get("rows_affected"):
        action = {"report": "left as is; set data.clean.pii: redact or drop", "redact": "redacted", "drop": "rows quarantined"}[pii["mode"]]
        lines.append(("yellow", f"PII in {pii['rows_affected']} rows ({_top(pii['found'])}): {action}"))
    analysis = report.get("analysis", {})
    if shape := analysis.get("shape"):
        if shape["rows"]:
            lines.append(("", f"turns per row: {_top(shape['turns']['histogram'])}; with a system prompt: {shape['system_prompt_share']:.0%}"))
    if labels := analysis.get("labels"):
        shares = {k: f"{v:.0%}" for k, v in labels["shares"].items()}
        unlabelled = f"; unlabelled: {labels['unlabelled']}" if labels["unlabelled"] else ""
        lines.append(("", f"labels (train): {_top(shares) or 'none'}{unlabelled}"))
    for rule in analysis.get("rules", []):
        failing = ", ".join(f"{r['source']}:{r['line']}" for r in rule["failing"][:5])
        more = " ..." if rule["failed"] > 5 else ""
        text = f"rule '{rule['name']}' ({rule['kind']}): {rule['passed']}/{rule['checked']} pass"
        lines.append(("yellow" if rule["failed"] else "", text + (f"; failing: {failing}{more}" if rule["failed"] else "")))
    if diversity := analysis.get("diversity"):
        detail = (
            f" ({diversity['clusters']} clusters, largest {diversity['largest_cluster_share']:.0%})"
            if diversity.get("clusters")
            else ""
        )
        risks = f": {'; '.join(diversity['risks'])}" if diversity.get("risks") else ""
        lines.append(("" if diversity["verdict"] == "GOOD" else "yellow", f"diversity: {diversity['verdict']}{detail}{risks}"))
    for warning in analysis.get("warnings", []):
        if not warning.startswith("rule '"):  # rules have their own line above
            lines.append(("yellow", f"warning: {warning}"))
    gates = report.get("gates", [])
    verdict = verdict_line(gates) + ("" if gates else " (no data.gates set)")
    lines.append(("bold green" if all(g["passed"] for g in gates) else "bold red", verdict))
    return lines


def print_findings(report: dict) -> None:
    """Print `summary_lines` on the console (warnings in yellow)."""
    from rich.markup import escape

    from tunekit.console import console

    for style, text in summary_lines(report):
        console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), soft_wrap=True, highlight=False)
