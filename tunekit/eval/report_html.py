"""eval_report.html: the same numbers as eval_report.json, as one self-contained page (no scripts, no network)."""

from __future__ import annotations

from html import escape
from pathlib import Path

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#080;font-weight:bold}.fail{color:#b00;font-weight:bold}
.warn{color:#b70;font-weight:bold}pre{white-space:pre-wrap;margin:0;font-size:90%}h2{margin-top:1.6em}"""


def _num(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics(report: dict) -> str:
    base, tuned = report["model"].get("base"), report["model"]["tuned"]
    rows = []
    for name, value in tuned.items():
        b = (base or {}).get(name)
        delta = "" if b is None or value is None else f"{value - b:+.3f}"
        rows.append([escape(name), *([_num(b)] if base is not None else []), _num(value), *([delta] if base is not None else [])])
    for field, values in report["per_field"].items():
        rows.append([f"field {escape(field)} (n={values['n']})", *([_num(values.get('base'))] if base is not None else []),
                     _num(values.get("tuned")), *([""] if base is not None else [])])
    header = ["metric", *(["base"] if base is not None else []), "tuned", *(["delta"] if base is not None else [])]
    return _table(header, rows)


def _classification(report: dict) -> str:
    parts = []
    for side, block in report["classification"].items():
        rows = [[escape(label), _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), c["support"]] for label, c in block["per_class"].items()]
        parts.append(f"<h3>{side}: accuracy {_num(block['accuracy'])}, macro-F1 {_num(block['macro_f1'])}</h3>")
        parts.append(_table(["class", "precision", "recall", "F1", "support"], rows))
        columns = list(next(iter(block["confusion"].values()), {}).keys())
        matrix = [[escape(ref), *[counts[c] for c in columns]] for ref, counts in block["confusion"].items()]
        parts.append(_table(["reference \\ predicted", *columns], matrix))
    return "".join(parts)


def _forgetting(forgetting: dict) -> str:
    rows = []
    for name, block in [*forgetting["categories"].items(), ("overall", forgetting["overall"])]:
        verdict = block["verdict"]
        rows.append([escape(name), block["n"], _num(block.get("base")), _num(block.get("tuned")), _num(block.get("drop")),
                     f"<span class='{verdict}'>{verdict.upper()}</span>"])
    seen = forgetting.get("contaminated") or {}
    fate = "left out" if seen.get("excluded") else "kept (eval.contamination.exclude is off)"
    note = f"<p>{seen['n']} suite item(s) {fate}: their question is in the training data.</p>" if seen.get("n") else ""
    return _table(["category", "n", "base", "tuned", "drop", "verdict"], rows) + note


def _changed(report: dict, examples: list[dict] | None) -> str:
    changed = report["changed"]
    parts = [f"<p>{changed['n_fixed']} fixed, {changed['n_broken']} broken (outcome: {escape(changed.get('outcome', ''))}).</p>"]
    if examples:
        for kind in ("fixed", "broken"):
            rows = [[i, f"<pre>{escape(examples[i]['reference'])}</pre>", f"<pre>{escape(examples[i].get('base_output', ''))}</pre>",
                     f"<pre>{escape(examples[i].get('tuned_output', ''))}</pre>"] for i in changed[kind]]
            if rows:
                parts.append(f"<h3>{kind}</h3>" + _table(["#", "reference", "base", "tuned"], rows))
    return "".join(parts)


def _verdict(verdict: dict | None) -> str:
    if not verdict or not verdict["gates"]:
        return "<p>No gates in the recipe (eval.gates).</p>"
    rows = [[escape(g["gate"]), _num(g["left"]), _num(g["right"]),
             "<span class='pass'>PASS</span>" if g["passed"] else f"<span class='fail'>FAIL</span> {escape(g.get('reason', ''))}"]
            for g in verdict["gates"]]
    overall = "<span class='pass'>PASS</span>" if verdict["passed"] else "<span class='fail'>FAIL</span>"
    return f"<p>Verdict: {overall}</p>" + _table(["gate", "left", "right", "result"], rows)


def write_html(report: dict, path: Path, predictions: list[dict] | None = None) -> None:
    """Write the page; `predictions` (rows of predictions.jsonl) adds the texts of changed examples."""
    contamination = report["contamination"]
    sections = [
        f"<h1>eval report</h1><p>{report['n_examples']} test examples scored of {report['n_total']}; "
        f"{contamination['flagged']} flagged as seen in training, {contamination['excluded']} excluded. "
        f"Decoding: {escape(report['settings']['decoding'])}. Tuned: {escape(str(report['settings'].get('tuned_source')))}.</p>",
        "<h2>gates</h2>" + _verdict(report.get("verdict")),
        "<h2>task metrics</h2>" + _metrics(report),
    ]
    if report["classification"]:
        sections.append("<h2>classification</h2>" + _classification(report))
    if report.get("forgetting"):
        sections.append("<h2>forgetting</h2>" + _forgetting(report["forgetting"]))
    if report.get("judge"):
        rows = [[escape(k), _num(v)] for k, v in report["judge"].items()]
        sections.append("<h2>judge</h2>" + _table(["", "value"], rows))
    sections.append("<h2>changed outcomes</h2>" + _changed(report, predictions))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>eval report</title><style>{_STYLE}</style></head>"
                    f"<body>{''.join(sections)}</body></html>\n", encoding="utf-8")
