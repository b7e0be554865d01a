"""data_report.html: the data report for people, one self-contained file.

Plots are PNGs embedded as base64 data URIs and the CSS is inline, so the page opens offline
and can be mailed around. Every value that may come from user data is HTML-escaped. Sections
whose data is absent from the report (no labels, no diversity run...) are left out.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable
from html import escape
from pathlib import Path

from tunekit.runs import RunPaths

HISTOGRAM_BINS = 20
_EXAMPLES_PER_REASON = 5
_RAW_SHOWN = 300  # characters of an offending line shown in the quarantine table
_ROWS_SHOWN = 50  # rows of a generic list shown before "... and N more"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}pre{white-space:pre-wrap;word-break:break-all;margin:0}
.verdict{font-weight:bold;padding:.1rem .4rem;border-radius:.2rem}.good{background:#d8f5d8}.bad{background:#f9d6d6}.warn{background:#fbeec2}
img{max-width:100%;border:1px solid #eee}
"""


# ---------------------------------------------------------------- figures


def token_histogram(lengths: Iterable[int], upper: int) -> dict:
    """Counts of token lengths in HISTOGRAM_BINS equal bins from 0 to `upper` (the last bin is closed)."""
    width = max(upper, 1) / HISTOGRAM_BINS
    counts = [0] * HISTOGRAM_BINS
    for n in lengths:
        counts[min(int(n / width), HISTOGRAM_BINS - 1)] += 1
    return {"edges": [round(i * width, 2) for i in range(HISTOGRAM_BINS + 1)], "counts": counts}


def _figure(width: float = 7, height: float = 3.6):
    # The object API with an Agg canvas: no pyplot global state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_lengths(report: dict, path: Path) -> Path | None:
    """Token-length histogram of train, the other splits overlaid, max_length marked. None without rows."""
    splits = {n: s["tokens"].get("histogram") for n, s in report["splits"].items() if s["rows"]}
    splits = {n: h for n, h in splits.items() if h}
    if not splits:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    for name, histogram in splits.items():
        edges, counts = histogram["edges"], histogram["counts"]
        if name == "train":
            axes.stairs(counts, edges, fill=True, alpha=0.45, label="train")
        else:
            axes.stairs(counts, edges, linewidth=1.8, label=name)
    max_length = report["settings"]["max_length"]
    axes.axvline(max_length, color="crimson", linestyle="--", label=f"max_length = {max_length}")
    axes.set_xlabel("tokens under the chat template")
    axes.set_ylabel("rows")
    axes.yaxis.get_major_locator().set_params(integer=True)  # row counts: no 0.25 ticks
    axes.set_title("Token lengths")
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(figure))
    return path


def plot_counts(counts: dict, title: str) -> bytes:
    """A horizontal bar chart of label -> count (largest on top)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:30]
    figure = _figure(7, max(2.0, 0.35 * len(items) + 1.2))
    axes = figure.add_subplot()
    names = [str(k)[:40] for k, _ in reversed(items)]
    axes.barh(range(len(items)), [v for _, v in reversed(items)], color="#4c72b0")
    axes.set_yticks(range(len(items)), names)
    axes.set_xlabel("rows")
    axes.set_title(title)
    return _png(figure)


# ---------------------------------------------------------------- HTML pieces


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


class _Nested:
    """A value inside a table cell that `_render` draws at the given nesting depth."""

    def __init__(self, value, depth: int):
        self.value, self.depth = value, depth


def _cell(value) -> str:
    depth = 0
    if isinstance(value, _Nested):
        value, depth = value.value, value.depth
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="n">{escape(str(value))}</td>'
    return f"<td>{_render(value, depth)}</td>"


def _table(header: list[str], rows: Iterable[Iterable]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _render(value, depth: int = 0) -> str:
    """Any JSON value as HTML: dicts as key/value tables, lists of dicts as tables, the rest as text."""
    if isinstance(value, (dict, list)) and not value:
        return "<em>none</em>"
    if isinstance(value, dict):
        if depth > 3:
            return f"<code>{escape(json.dumps(value, ensure_ascii=False)[:500])}</code>"
        return _table(["key", "value"], ([k, _Nested(v, depth + 1)] for k, v in value.items()))
    if isinstance(value, list):
        more = f"<p>... and {len(value) - _ROWS_SHOWN} more</p>" if len(value) > _ROWS_SHOWN else ""
        shown = value[:_ROWS_SHOWN]
        if shown and all(isinstance(v, dict) for v in shown):
            columns = list(dict.fromkeys(k for row in shown for k in row))
            return _table(columns, ([_Nested(row.get(c, ""), depth + 1) for c in columns] for row in shown)) + more
        return escape(", ".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in shown)) + more
    return escape(str(value))


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _gates_verdict(gates: dict) -> str:
    """One line: the gates' verdict, whatever shape the gate results take."""
    if "verdict" in gates:
        text = str(gates["verdict"])
        passed = text.upper() in {"PASS", "PASSED", "OK", "GOOD"}
    elif "passed" in gates or "ok" in gates:
        passed = bool(gates.get("passed", gates.get("ok")))
        text = "PASS" if passed else "FAIL"
    else:
        return ""
    css = "good" if passed else "bad"
    return f'<p>Data gates: <span class="verdict {css}">{escape(text)}</span></p>'


def _summary(report: dict) -> str:
    files = report["files"]
    lines = sum(f["lines"] for f in files)
    rows = lines - sum(f["blank"] for f in files)
    kept = sum(f["kept"] for f in files)
    quarantined = sum(f["quarantined"] for f in files)
    duplicates = sum(f.get("duplicates", 0) for f in files)
    accounting = report.get("accounting", {}).get("ok")
    table = _table(
        ["files", "lines", "blank", "rows", "kept", "quarantined", "of which duplicates", "duplicate share", "every line accounted for"],
        [[len(files), lines, lines - rows, rows, kept, quarantined, duplicates, _share(duplicates, rows), accounting]],
    )
    gates = report.get("gates")
    verdict = _gates_verdict(gates) if isinstance(gates, dict) else ""
    return _section("Summary", verdict + table + (_render(gates) if isinstance(gates, dict) else ""))


def _files(report: dict) -> str:
    header = ["key", "path", "format", "lines", "blank", "kept", "quarantined", "duplicates", "sha256"]
    rows = [
        [f.get("key", ""), f.get("path", ""), f.get("format", ""), f["lines"], f["blank"], f["kept"], f["quarantined"],
         f.get("duplicates", 0), str(f.get("sha256", ""))[:12]]
        for f in report["files"]
    ]
    return _section("Files", _table(header, rows))


def _quarantine_examples(path: Path) -> dict[str, list[dict]]:
    """The first few quarantined rows of each reason, read from quarantine.jsonl."""
    examples: dict[str, list[dict]] = {}
    if not path.exists():
        return examples
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            shown = examples.setdefault(str(row.get("reason", "?")), [])
            if len(shown) < _EXAMPLES_PER_REASON:
                shown.append(row)
    return examples


def _quarantine(report: dict, run: RunPaths) -> str:
    quarantine = report["quarantine"]
    if not quarantine.get("total"):
        return _section("Quarantine", "<p>No row was quarantined.</p>")
    examples = _quarantine_examples(run.quarantine)
    by_count = sorted(quarantine["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    rows = []
    for reason, count in by_count:
        listed = "".join(
            f"<li><code>{escape(str(r.get('source')))}:{escape(str(r.get('line')))}</code> {escape(str(r.get('detail', '')))}"
            f"<pre>{escape(str(r.get('raw', ''))[:_RAW_SHOWN])}</pre></li>"
            for r in examples.get(reason, [])
        )
        rows.append(f"<tr><td><code>{escape(reason)}</code></td><td class=\"n\">{count}</td><td><ul>{listed}</ul></td></tr>")
    table = "<table><tr><th>reason</th><th>rows</th><th>first examples</th></tr>" + "".join(rows) + "</table>"
    where = f"<p>{quarantine['total']} rows, each with its original line, in <code>{escape(str(quarantine.get('path', '')))}</code>.</p>"
    return _section("Quarantine", where + table)


def _splits(report: dict, lengths_png: Path | None) -> str:
    header = ["split", "rows", "tokens min", "mean", "p50", "p95", "max", "over max_length", "truncated"]
    rows = []
    for name, split in report["splits"].items():
        tokens = split["tokens"]
        stats = [tokens.get(k) if tokens.get(k) is not None else "-" for k in ("min", "mean", "p50", "p95", "max")]
        rows.append([name, split["rows"], *stats, tokens.get("over_max_length", 0), split.get("truncated", 0)])
    picture = _img(lengths_png.read_bytes(), "token length histogram") if lengths_png else ""
    return _section("Splits and token lengths", _table(header, rows) + picture)


def _label_counts(labels: dict) -> dict | None:
    """The label -> count mapping of the label analysis, wherever it sits."""
    for key in ("counts", "by_label", "distribution"):
        if isinstance(labels.get(key), dict):
            return labels[key]
    if labels and all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        return labels
    return None


def _labels(labels: dict) -> str:
    counts = _label_counts(labels)
    chart = _img(plot_counts(counts, "Label balance"), "label balance chart") if counts else ""
    return _section("Label balance", chart + _render(labels))


def _diversity(diversity: dict) -> str:
    judged = str(diversity.get("verdict", "?"))
    css = {"GOOD": "good", "RISKY": "bad"}.get(judged, "warn")
    head = f'<p>Diversity of the user turns: <span class="verdict {css}">{escape(judged)}</span></p>'
    plot = Path(str(diversity.get("plot", "")))
    picture = _img(plot.read_bytes(), "diversity scatter plot") if diversity.get("plot") and plot.is_file() else ""
    details = {k: v for k, v in diversity.items() if k not in {"verdict", "plot"}}
    return _section("Diversity", head + picture + _render(details))


def _analysis(report: dict) -> list[str]:
    analysis = report.get("analysis")
    if not isinstance(analysis, dict):
        return []
    parts = []
    if isinstance(analysis.get("labels"), dict):
        parts.append(_labels(analysis["labels"]))
    if isinstance(analysis.get("diversity"), dict):
        parts.append(_diversity(analysis["diversity"]))
    parts += [_section(f"Analysis: {key}", _render(value)) for key, value in analysis.items() if key not in {"labels", "diversity"}]
    return parts


# Top-level report keys with their own section above (or, for settings and format, shown nowhere
# on purpose: they repeat the recipe).
_SHOWN_KEYS = {"format", "settings", "files", "quarantine", "splits", "accounting", "analysis", "leakage", "pii", "gates"}


def render_html(report: dict, run: RunPaths, lengths_png: Path | None = None) -> str:
    """The whole page as a string; sections appear only when the report has their data."""
    parts = [_summary(report), _files(report), _quarantine(report, run), _splits(report, lengths_png)]
    parts += _analysis(report)
    for key, title in (("leakage", "Leakage"), ("pii", "Personal data (PII)")):
        if report.get(key):
            parts.append(_section(title, _render(report[key])))
    # Sections added by later stages of the pipeline (normalisation, near-dedup...), shown as they are.
    parts += [_section(key.replace("_", " ").capitalize(), _render(value)) for key, value in report.items() if key not in _SHOWN_KEYS]
    title = f"Data report: {run.root.name}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>{''.join(parts)}</body></html>\n"
    )


def report_outputs(run: RunPaths) -> tuple[Path, ...]:
    """Files written next to data_report.json, so a new prepare can clear stale ones first."""
    return (run.data_html, run.lengths_plot, run.diversity_plot)


def write_html_report(report: dict, run: RunPaths) -> Path:
    """Write lengths.png and data_report.html into the run's data dir; returns the HTML path."""
    lengths_png = plot_lengths(report, run.lengths_plot)
    path = run.data_html
    path.write_text(render_html(report, run, lengths_png), encoding="utf-8")
    return path
