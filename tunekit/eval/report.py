"""The eval report: one JSON document a person or a gate can read, the HTML page, and the terminal tables."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from tunekit.config.metrics import direction_of
from tunekit.console import console
from tunekit.eval.metrics import field_counts
from tunekit.eval.task import aggregate, outcome
from tunekit.eval.report_html import write_html

__all__ = ["build_report", "flat_metrics", "print_report", "print_table", "write_html"]


def _changed(scored: dict[str, list[dict]], kept: list[int], examples) -> dict:
    """Examples whose outcome differs between base and tuned: fixed (base wrong, tuned right) and broken."""
    if "base" not in scored:
        return {"fixed": [], "broken": [], "n_fixed": 0, "n_broken": 0}
    fixed, broken = [], []
    for i in kept:
        before, after = outcome(scored["base"][i]), outcome(scored["tuned"][i])
        if before is None or after is None or before == after:
            continue
        (fixed if after else broken).append(i)
    return {"fixed": fixed, "broken": broken, "n_fixed": len(fixed), "n_broken": len(broken),
            "outcome": "exact_match, else all_fields, else label, else normalized_match, else json_valid"}


def build_report(scored, generations, nll, *, spec, kept, examples, flags, forgetting, judge, settings) -> dict:
    """Assemble eval_report.json from per-example results (only the `kept` examples are scored)."""
    models, classification, per_field_by_model = {}, {}, {}
    for name, per_example in scored.items():
        gen = generations[name]
        side = aggregate(
            [per_example[i] for i in kept], spec,
            nll=[nll[name][i] for i in kept] if name in nll else None,
            latency_s=[gen.latency_s[i] for i in kept], lengths=[gen.lengths[i] for i in kept],
            finish=[gen.finish[i] for i in kept],
        )
        models[name], per_field_by_model[name] = side["metrics"], side["per_field"]
        if "classification" in side:
            classification[name] = side["classification"]
    references = [examples[i].reference for i in kept]
    counts = field_counts(references) if "field_accuracy" in spec.metrics else {}
    per_field = {f: {**{n: per_field_by_model[n].get(f) for n in scored}, "n": c} for f, c in counts.items()}
    flagged = [{"index": i, **flag} for i, flag in enumerate(flags) if flag is not None]
    report = {
        "n_examples": len(kept),
        "n_total": len(examples),
        "model": models,
        "per_field": per_field,
        "classification": classification,
        "changed": _changed(scored, kept, examples),
        "contamination": {"flagged": len(flagged), "excluded": len(examples) - len(kept), "examples": flagged},
        "forgetting": forgetting,
        "judge": judge,
        "settings": settings,
        "truncated": {
            name: {"n": sum(generations[name].finish[i] == "length" for i in kept), "of": len(kept)} for name in scored
        },
        "timing": {
            name: {
                "seconds": round(gen.seconds, 3),
                "generated_tokens": gen.new_tokens,
                "tokens_per_s": round(gen.new_tokens / gen.seconds, 2) if gen.seconds > 0 else None,
                "cached": gen.cached,  # the answers (and these timings) come from an earlier run
            }
            for name, gen in generations.items()
        },
    }
    report["metrics"] = flat_metrics(report)
    return report


def flat_metrics(report: dict) -> dict:
    """Every number a gate can name: task.*, base.task.*, forgetting.*, judge.*, contamination.flagged."""
    values: dict = {"contamination.flagged": report["contamination"]["flagged"]}
    for side, prefix in (("tuned", ""), ("base", "base.")):
        for name, value in (report["model"].get(side) or {}).items():
            values[f"{prefix}task.{name}"] = value
    forgetting = report.get("forgetting")
    if forgetting:
        blocks = {"overall": forgetting["overall"], **forgetting["categories"]}
        for name, block in blocks.items():
            values[f"forgetting.{name}"] = block.get("tuned")
            values[f"base.forgetting.{name}"] = block.get("base")
            values[f"forgetting.{name}_drop"] = block.get("drop")
    judge = report.get("judge")
    if judge:
        values["judge.rubric_mean"] = judge.get("tuned_rubric_mean")
        values["base.judge.rubric_mean"] = judge.get("base_rubric_mean")
        for key in ("win_rate", "loss_rate", "tie_rate", "order_agreement", "failures"):
            if key in judge:
                values[f"judge.{key}"] = judge[key]
        cut = judge.get("truncated")
        if cut is not None:  # the judge's replies cut at eval.judge.max_tokens, as task.truncated_share counts answers
            values["judge.truncated_share"] = cut["n"] / cut["of"] if cut["of"] else None
    return values


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta(base, tuned, lower_is_better: bool = False) -> str:
    if base is None or tuned is None:
        return ""
    delta = tuned - base
    good = delta < 0 if lower_is_better else delta > 0
    colour = "dim" if delta == 0 else "green" if good else "red"
    return f"[{colour}]{delta:+.3f}[/]"


def print_table(report: dict) -> None:
    """metric | base | tuned | delta, one row per JSON field, per class F1, then speed."""
    models = report["model"]
    base, tuned = models.get("base"), models["tuned"]
    excluded = report["contamination"]["excluded"]
    title = f"eval on {report['n_examples']} test examples ({report['settings']['decoding']})"
    table = Table(title=title + (f", {excluded} contaminated excluded" if excluded else ""))
    for column in ["metric", *(["base"] if base is not None else []), "tuned", *(["delta"] if base is not None else [])]:
        table.add_column(column, justify="left" if column == "metric" else "right")

    def add(label: str, base_value, tuned_value, lower_is_better: bool = False) -> None:
        if base is None:
            table.add_row(label, _fmt(tuned_value))
        else:
            table.add_row(label, _fmt(base_value), _fmt(tuned_value), _delta(base_value, tuned_value, lower_is_better))

    for metric, value in tuned.items():
        add(metric, (base or {}).get(metric), value, direction_of(metric) == "lower")
    for field, values in report["per_field"].items():
        add(f"  field {field} (n={values['n']})", values.get("base"), values.get("tuned"))
    for label, per_class in (report["classification"].get("tuned") or {}).get("per_class", {}).items():
        base_f1 = ((report["classification"].get("base") or {}).get("per_class", {}).get(label) or {}).get("f1")
        add(f"  F1 {label} (n={per_class['support']})", base_f1, per_class["f1"])
    speed = {name: t["tokens_per_s"] for name, t in report["timing"].items()}
    add("tokens/s", speed.get("base"), speed.get("tuned"))
    console.print(table)
    changed = report["changed"]
    if base is not None:
        console.print(f"outcome changed: {changed['n_fixed']} fixed, {changed['n_broken']} broken (base -> tuned)")


def _print_forgetting(forgetting: dict) -> None:
    table = Table(title="forgetting (share right; drop = base - tuned)")
    for column in ("category", "n", "base", "tuned", "drop", "verdict"):
        table.add_column(column, justify="left" if column in ("category", "verdict") else "right")
    colours = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}
    for name, block in [*forgetting["categories"].items(), ("overall", forgetting["overall"])]:
        verdict = block["verdict"]
        table.add_row(name, str(block["n"]), _fmt(block.get("base")), _fmt(block.get("tuned")), _fmt(block.get("drop")),
                      f"[{colours[verdict]}]{verdict.upper()}[/]")
    console.print(table)
    seen = forgetting.get("contaminated") or {}
    if seen.get("n"):
        fate = "left out" if seen.get("excluded") else "kept (eval.contamination.exclude is off)"
        console.print(f"[yellow]{seen['n']} suite item(s) {fate}: their question is in the training data[/]")


def _print_judge(judge: dict) -> None:
    shown = {k: v for k, v in judge.items() if k not in ("model", "truncated")}  # truncated: a warning of its own
    console.print(f"judge {escape(str(judge.get('model')))}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()))


def print_verdict(verdict: dict) -> None:
    if not verdict["gates"]:
        console.print("[dim]no eval gates in the recipe (eval.gates)[/]")
        return
    table = Table(title="gates")
    for column in ("gate", "left", "right", "result"):
        table.add_column(column, justify="left" if column in ("gate", "result") else "right")
    for row in verdict["gates"]:
        result = "[green]PASS[/]" if row["passed"] else f"[red]FAIL[/] {escape(row.get('reason', ''))}"
        table.add_row(escape(row["gate"]), _fmt(row["left"]), _fmt(row["right"]), result)
    console.print(table)
    console.print("[bold green]verdict: PASS[/]" if verdict["passed"] else f"[bold red]verdict: FAIL[/] ({verdict['n_failed']} gate(s))")


def truncation_lines(report: dict) -> list[str]:
    """One line per side whose answers hit the token budget (a cut answer scores like a wrong one), and
    one for the judge's replies cut at theirs (a verdict cut before its score is a failure)."""
    settings = report["settings"]
    lines = []
    for name, counts in (report.get("truncated") or {}).items():
        if counts["n"]:
            lines.append(
                f"{counts['n']} of {counts['of']} {name} answers were cut at max_new_tokens={settings['max_new_tokens']} "
                f"(references are up to {settings.get('reference_tokens_max', '?')} tokens); "
                "raise eval.max_new_tokens if they should be longer"
            )
    for name, counts in ((report.get("forgetting") or {}).get("truncated") or {}).items():
        if counts["n"]:
            lines.append(f"{counts['n']} of {counts['of']} {name} forgetting-suite answers were cut at their item's budget")
    judged = (report.get("judge") or {}).get("truncated") or {}
    if judged.get("n"):
        budgets = " or ".join(str(k) for k in judged["max_tokens"])
        lines.append(
            f"{judged['n']} of {judged['of']} judge replies were cut at eval.judge.max_tokens={budgets}; "
            "raise it if the judge's verdicts need more room"
        )
    return lines


def _print_preference(summary: dict, split: str) -> None:
    table = Table(title=f"preference pairs ({summary['n']} held out, {split})", title_justify="left")
    for column in ("metric", "base", "tuned"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("prefers chosen (higher log-likelihood)", _fmt(summary.get("base_prefers_chosen")), _fmt(summary.get("prefers_chosen")))
    table.add_row("reward accuracy (chosen beats rejected vs base)", "", _fmt(summary.get("accuracy")))
    table.add_row("reward margin, mean (nats)", "", _fmt(summary.get("margin_mean")))
    console.print(table)


def print_report(report: dict) -> None:
    if report.get("skipped"):
        console.print(f"[yellow]eval skipped[/]: {escape(report['skipped'])}", soft_wrap=True)
        return
    if "preference" in report:
        _print_preference(report["preference"], report["settings"]["split"])
        print_verdict(report["verdict"])
        return
    print_table(report)
    for line in truncation_lines(report):
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if report.get("forgetting"):
        _print_forgetting(report["forgetting"])
    if report.get("judge"):
        _print_judge(report["judge"])
    if report.get("verdict") is not None:
        print_verdict(report["verdict"])
