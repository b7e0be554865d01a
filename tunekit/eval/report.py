"""The eval report: one JSON document a person or a gate can read, and the table printed after a run."""

from __future__ import annotations

from rich.table import Table

from tunekit.console import console
from tunekit.eval import metrics as M


def build_report(
    scored: dict[str, list[dict]],
    timing: dict[str, tuple[float, int]],
    *,
    metrics: list[str],
    references: list[str],
    settings: dict,
) -> dict:
    """Assemble eval_report.json.

    scored: model name ("base", "tuned") -> per-example results of `metrics.score_example`.
    timing: model name -> (generation seconds, generated tokens).
    """
    summaries, per_field_by_model = {}, {}
    for name, per_example in scored.items():
        summaries[name], per_field_by_model[name] = M.aggregate(per_example, metrics)
    counts = M.field_counts(references) if "field_accuracy" in metrics else {}
    per_field = {
        field: {**{name: per_field_by_model[name].get(field) for name in scored}, "n": count} for field, count in counts.items()
    }
    return {
        "model": summaries,
        "per_field": per_field,
        "n_examples": len(references),
        "settings": settings,
        "timing": {
            name: {
                "seconds": round(seconds, 3),
                "generated_tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
            }
            for name, (seconds, tokens) in timing.items()
        },
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _delta(base: float | None, tuned: float | None) -> str:
    if base is None or tuned is None:
        return ""
    delta = tuned - base
    colour = "green" if delta > 0 else "red" if delta < 0 else "dim"
    return f"[{colour}]{delta:+.3f}[/]"


def print_table(report: dict) -> None:
    """metric | base | tuned | delta, then one row per JSON field, then generation speed."""
    models = report["model"]
    base, tuned = models.get("base"), models["tuned"]
    table = Table(title=f"eval on {report['n_examples']} test examples (greedy)")
    table.add_column("metric")
    if base is not None:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    if base is not None:
        table.add_column("delta", justify="right")

    def add(label: str, base_value, tuned_value) -> None:
        if base is None:
            table.add_row(label, _fmt(tuned_value))
        else:
            table.add_row(label, _fmt(base_value), _fmt(tuned_value), _delta(base_value, tuned_value))

    for metric, value in tuned.items():
        add(metric, (base or {}).get(metric), value)
    for field, values in report["per_field"].items():
        add(f"  field {field} (n={values['n']})", values.get("base"), values.get("tuned"))
    speed = {name: t["tokens_per_s"] for name, t in report["timing"].items()}
    if base is not None:
        table.add_row("tokens/s", _fmt_speed(speed.get("base")), _fmt_speed(speed.get("tuned")), "")
    else:
        table.add_row("tokens/s", _fmt_speed(speed.get("tuned")))
    console.print(table)


def _fmt_speed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
