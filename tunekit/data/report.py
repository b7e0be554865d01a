"""The data report: what became of every input line, per file, per reason and per split."""

from __future__ import annotations

from collections import Counter

from rich.markup import escape
from rich.table import Table

from tunekit.config import Recipe
from tunekit.data.analyze import print_findings
from tunekit.data.clean import DUPLICATE_REASONS
from tunekit.data.neardup import leakage_summary
from tunekit.data.html_report import token_histogram
from tunekit.data.split import token_stats
from tunekit.data.validate import Example, InputFile
from tunekit.console import console
from tunekit.runs import RunPaths

_SHOWN_IN_SUMMARY = 5


def _file_entry(f: InputFile, kept: int) -> dict:
    reasons = Counter(r.reason for r in f.rejected)
    return {
        "key": f"data.{f.key}",
        "path": str(f.path),
        "sha256": f.sha256,
        "format": f.detected_format,
        # jsonl, json, csv, parquet or hf_dataset; `lines` counts its records, numbered per `unit`
        "input": f.input_type,
        "unit": f.unit,
        "lines": f.lines,
        "blank": f.blank,
        "kept": kept,
        "quarantined": len(f.rejected),  # every reason, duplicates included
        "duplicates": sum(reasons[r] for r in DUPLICATE_REASONS),
        "by_reason": dict(sorted(reasons.items())),
        "ignored_keys": dict(sorted(f.ignored_keys.items())),
    }


def _accounting(files: list[dict], split_rows: dict[str, int]) -> dict:
    """Check that each line of each file is blank, kept or quarantined, and kept rows are the split rows."""
    per_file = {
        f["path"]: {
            "lines": f["lines"],
            "blank": f["blank"],
            "kept": f["kept"],
            "quarantined": f["quarantined"],
            "ok": f["lines"] == f["blank"] + f["kept"] + f["quarantined"],
        }
        for f in files
    }
    kept_rows = sum(f["kept"] for f in files)
    ok = all(v["ok"] for v in per_file.values()) and kept_rows == sum(split_rows.values())
    return {"ok": ok, "files": per_file, "kept_rows": kept_rows, "split_rows": split_rows}


def _quarantine(run: RunPaths, inputs: list[InputFile]) -> dict:
    rejected = [r for f in inputs for r in sorted(f.rejected, key=lambda r: r.line)]
    reasons = Counter(r.reason for r in rejected)
    return {
        "path": str(run.quarantine),
        "total": len(rejected),
        "by_reason": dict(sorted(reasons.items())),
        # The first problems a user should fix; duplicates are expected and are not listed here.
        "first": [
            {"source": r.source, "line": r.line, "reason": r.reason, "detail": r.detail}
            for r in rejected
            if r.reason not in DUPLICATE_REASONS
        ][:_SHOWN_IN_SUMMARY],
    }


def _splits(run: RunPaths, splits: dict[str, list[Example]], max_length: int, truncating: bool) -> dict:
    entries = {}
    # The same bins for every split, so their histograms can be overlaid and compared.
    upper = max([max_length, *(e.n_tokens for rows in splits.values() for e in rows)])
    for name, rows in splits.items():
        stats = token_stats(rows, max_length)
        stats["histogram"] = token_histogram((e.n_tokens for e in rows), upper)
        entries[name] = {
            "path": str(run.split(name)) if rows or name != "test" else None,
            "rows": len(rows),
            "tokens": stats,
            # Training cuts these to max_length; the lengths in `tokens` are before the cut.
            "truncated": stats["over_max_length"] if truncating else 0,
        }
    return entries


def build_report(recipe: Recipe, run: RunPaths, inputs: list[InputFile], splits: dict[str, list[Example]]) -> dict:
    """The report dict written to data_report.json. No timestamps: same input, same bytes."""
    data = recipe.data
    kept = Counter(e.source for rows in splits.values() for e in rows)
    files = [_file_entry(f, kept[f.source]) for f in inputs]
    return {
        "format": {"setting": data.format, "detected": {f.source: f.detected_format for f in inputs}},
        "settings": {
            "max_length": data.max_length,
            "over_length": data.over_length,
            "dedup": data.dedup,
            "seed": data.seed,
            "val_fraction": data.val_fraction if data.eval is None else None,
            "test_fraction": data.test_fraction if data.test is None else None,
            "system_prompt": data.system_prompt,
        },
        "files": files,
        "quarantine": _quarantine(run, inputs),
        "splits": _splits(run, splits, data.max_length, data.over_length == "truncate"),
        "accounting": _accounting(files, {name: len(rows) for name, rows in splits.items()}),
    }


def quarantine_summary(report: dict) -> list[str]:
    """Warning lines for the CLI: totals by reason, then the first few bad lines with file:line."""
    quarantine = report["quarantine"]
    if not quarantine["total"]:
        return []
    total_lines = sum(f["lines"] for f in report["files"])
    by_count = sorted(quarantine["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    reasons = ", ".join(f"{reason}: {count}" for reason, count in by_count)
    lines = [f"{quarantine['total']} of {total_lines} lines quarantined ({reasons}) → {quarantine['path']}"]
    lines += [f"  {r['source']}:{r['line']}: {r['reason']}: {r['detail']}" for r in quarantine["first"]]
    return lines


def _num(value) -> str:
    return "-" if value is None else str(value)


def _summary_table(report: dict) -> Table:
    table = Table(title="Prepared data", title_justify="left")
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("tokens p95", justify="right")
    table.add_column("tokens max", justify="right")
    table.add_column("over max_length", justify="right")
    for name, split in report["splits"].items():
        if name == "test" and not split["rows"]:
            continue
        tokens = split["tokens"]
        table.add_row(name, str(split["rows"]), _num(tokens["p95"]), _num(tokens["max"]), str(tokens["over_max_length"]))
    return table


def _quarantine_table(report: dict) -> Table | None:
    by_reason = report["quarantine"]["by_reason"]
    if not by_reason:
        return None
    table = Table(title="Quarantined", title_justify="left")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for reason, count in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(reason, str(count))
    return table


def print_summary(report: dict, run: RunPaths) -> None:
    """The quarantine warning, the split table and the per-reason table, on the console."""
    warnings = quarantine_summary(report)
    if warnings:
        console.print(f"[yellow]warning:[/] {escape(warnings[0])}", soft_wrap=True)
        for line in warnings[1:]:
            console.print(escape(line), soft_wrap=True, highlight=False)
    console.print(_summary_table(report))
    if (quarantined := _quarantine_table(report)) is not None:
        console.print(quarantined)
    for line in leakage_summary(report):
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    print_findings(report)  # PII, labels, rules, warnings and the data verdict
    console.print(f"report: {escape(str(run.data_report))} (readable: {escape(str(run.data_html))})")
