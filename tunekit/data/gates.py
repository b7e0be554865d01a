"""Data gates: checks from `data.gates` that turn the data report into a pass/fail verdict.

`tunekit data prepare` exits 1 and `tunekit run` stops before training when one fails."""

from __future__ import annotations

from tunekit.config import DataGates
from tunekit.data.clean import DUPLICATE_REASONS
from tunekit.errors import DataError


class DataGateError(DataError):
    """The prepared data failed one or more of the recipe's data gates."""


def _input_rows(report: dict) -> int:
    """Rows read: every non-blank input line (kept, duplicate or quarantined)."""
    return sum(f["lines"] - f["blank"] for f in report["files"])


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _gate(name: str, value, limit, passed: bool, message: str | None = None) -> dict:
    entry = {"gate": name, "value": value, "limit": limit, "passed": passed}
    if message:
        entry["message"] = message
    return entry


def _label_gate(report: dict, limit: float) -> dict:
    labels = report.get("analysis", {}).get("labels")
    if not labels or labels["largest_share"] is None:
        why = "no labels: set data.analysis.label_field or data.analysis.label_regex" if not labels else "no training row has a label"
        return _gate("max_label_share", None, limit, False, why)
    share = labels["largest_share"]
    return _gate("max_label_share", share, limit, share <= limit, f"largest label '{labels['largest']}'")


def _diversity_gate(report: dict, required: str) -> dict:
    diversity = report.get("analysis", {}).get("diversity")
    verdict = diversity.get("verdict") if isinstance(diversity, dict) else None
    if verdict is None:
        return _gate("require_diversity", None, required, False, "no diversity result: enable data.analysis.diversity")
    return _gate("require_diversity", verdict, required, verdict == required)


def evaluate_gates(gates: DataGates, report: dict) -> list[dict]:
    """One entry per gate set in the recipe: {gate, value, limit, passed} (and a message when useful).

    Shares are of the rows read (non-blank input lines). Duplicates count every duplicate and
    leak reason; the quarantine share counts the other reasons (defects), so the two gates judge
    different things."""
    results = []
    rows = _input_rows(report)
    by_reason = report["quarantine"]["by_reason"]
    duplicates = sum(n for reason, n in by_reason.items() if reason in DUPLICATE_REASONS)
    if gates.min_examples is not None:
        train_rows = report["splits"]["train"]["rows"]
        results.append(_gate("min_examples", train_rows, gates.min_examples, train_rows >= gates.min_examples, "training rows"))
    if gates.max_duplicate_share is not None:
        share = _share(duplicates, rows)
        results.append(_gate("max_duplicate_share", share, gates.max_duplicate_share, share <= gates.max_duplicate_share, f"{duplicates} of {rows} rows"))
    if gates.max_quarantine_share is not None:
        defects = report["quarantine"]["total"] - duplicates
        share = _share(defects, rows)
        limit = gates.max_quarantine_share
        results.append(_gate("max_quarantine_share", share, limit, share <= limit, f"{defects} of {rows} rows, duplicates not counted"))
    if gates.max_label_share is not None:
        results.append(_label_gate(report, gates.max_label_share))
    if gates.require_diversity is not None:
        results.append(_diversity_gate(report, gates.require_diversity))
    return results


def describe_failure(gate: dict) -> str:
    """`max_duplicate_share: 0.25 > 0.1 (25 of 100 rows)`: the gate, its value against its limit, and why."""
    name, value, limit = gate["gate"], gate["value"], gate["limit"]
    if value is None:
        return f"{name}: {gate.get('message', 'no value')}"
    op = "<" if name == "min_examples" else ("!=" if name == "require_diversity" else ">")
    note = f" ({gate['message']})" if gate.get("message") else ""
    return f"{name}: {value} {op} {limit}{note}"


def verdict_line(gates: list[dict]) -> str:
    """`data verdict: PASS`, or `data verdict: FAIL: <each failed gate>`."""
    failed = [describe_failure(g) for g in gates if not g["passed"]]
    return "data verdict: PASS" if not failed else "data verdict: FAIL: " + "; ".join(failed)


def raise_on_failed_gates(report: dict, report_path=None) -> None:
    """Stop the pipeline (exit 1 in the CLI) when any gate in `report["gates"]` failed."""
    failed = [g for g in report.get("gates", []) if not g["passed"]]
    if not failed:
        return
    where = f"; see {report_path}" if report_path else ""
    raise DataGateError(
        f"data gates failed ({len(failed)}): " + "; ".join(describe_failure(g) for g in failed) + where,
        hint="fix the data, or relax data.gates in the recipe",
    )
