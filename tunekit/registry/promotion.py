"""Promotion gates: eval gates that may also name `current`, the alias holder's value.

`task.field_accuracy >= current - 0.01` means `>= current.task.field_accuracy - 0.01`, the same
way `base` works in eval gates (`tunekit.config.gates`); the gates are parsed and evaluated by the
eval gate code, over the candidate's metrics plus the holder's under `current.`.

A number is only compared with the holder's when both were measured on the same data: a gate
over `current.task.*` needs the same test-set fingerprint, one over `current.forgetting.*` the
same forgetting suite items. Otherwise promotion first evaluates the holder on the candidate's
test set (`tunekit.registry.reeval`), or, when asked not to, the gate fails with the reason. The default gates are skipped, not failed, when
the candidate's eval did not measure their metric (a classification task has no field_accuracy);
gates the user writes must be measured.
"""

from __future__ import annotations

import re

from tunekit.config.gates import GateSyntaxError, parse_gate
from tunekit.errors import RegistryError
from tunekit.eval.gates import evaluate
from tunekit.registry.records import VersionRecord

DEFAULT_GATES = ("task.field_accuracy >= current - 0.01", "forgetting.overall_drop <= 0.05")
_BARE_CURRENT = re.compile(r"(?<![\w.\-])current(?![\w.\-])")


def expand_current(text: str) -> str:
    """`task.x >= current - 0.01` -> `task.x >= current.task.x - 0.01` (exactly one metric on the left)."""
    if not _BARE_CURRENT.search(text):
        return text
    try:
        gate = parse_gate(text)
    except GateSyntaxError as exc:
        raise RegistryError(f"promotion gate '{text}': {exc}") from None
    left = [n for n in dict.fromkeys(_names(gate.left)) if n != "current" and not n.startswith("current.")]
    if len(left) != 1:
        raise RegistryError(f"promotion gate '{text}': `current` needs exactly one metric on the left side")
    return _BARE_CURRENT.sub(f"current.{left[0]}", text)


def _names(node: tuple) -> list[str]:
    if node[0] == "name":
        return [node[1]]
    return [name for child in node[1:] if isinstance(child, tuple) for name in _names(child)]


def check_gates(gates: list[str]) -> None:
    """Parse every gate now, so a typo is one error before anything is compared."""
    for text in gates:
        try:
            parse_gate(expand_current(text))
        except GateSyntaxError as exc:
            raise RegistryError(f"promotion gate '{text}': {exc}", hint="write gates like eval gates: `task.accuracy >= current - 0.01`") from None


def _same_data(candidate: VersionRecord, holder: VersionRecord, key: str) -> str | None:
    """None when both versions' evals used the same `key` fingerprint, else why they cannot be compared."""
    mine, theirs = (candidate.eval or {}).get(key), (holder.eval or {}).get(key)
    label = "test set" if key == "test_set" else "forgetting suite"
    if mine is None or theirs is None:
        return f"{label} not recorded for {candidate.ref if mine is None else holder.ref}"
    if mine != theirs:
        return f"different {label}: {candidate.ref} {_fingerprint_label(mine)} vs {holder.ref} {_fingerprint_label(theirs)}"
    return None


def _fingerprint_label(fingerprint: dict) -> str:
    digest = fingerprint.get("sha256") or fingerprint.get("items_sha256") or "?"
    count = fingerprint.get("n_examples") if "n_examples" in fingerprint else fingerprint.get("max_items")
    return f"sha256 {digest[:12]} (n={count})"


def incomparable(candidate: VersionRecord, holder: VersionRecord | None, gates: list[str] | None = None) -> list[str]:
    """Why the gates cannot compare the two versions' numbers as recorded (empty: they can)."""
    if holder is None:
        return []
    names = [n for text in (DEFAULT_GATES if gates is None else gates) for n in parse_gate(expand_current(text)).names]
    problems = []
    for key, prefix in (("test_set", "current.task."), ("forgetting_suite", "current.forgetting.")):
        if any(n.startswith(prefix) for n in names):
            problems.append(_same_data(candidate, holder, key))
    return [p for p in problems if p]


def evaluate_promotion(candidate: VersionRecord, holder: VersionRecord | None, gates: list[str] | None = None,
                       *, require_pass: bool = True) -> dict:
    """The evidence: every gate with both sides (and the holder's value), PASS/FAIL, and the reasons."""
    defaults = gates is None
    gates = list(DEFAULT_GATES if defaults else gates)
    check_gates(gates)
    values = dict(candidate.metrics or {})
    if holder is not None:
        values.update({f"current.{k}": v for k, v in (holder.metrics or {}).items()})
    rows = []
    if require_pass:
        rows.append({"gate": "verdict == PASS", "left": candidate.verdict, "right": "PASS", "passed": candidate.verdict == "PASS",
                     **({} if candidate.verdict == "PASS" else {"reason": f"{candidate.ref}'s eval verdict is {candidate.verdict or 'missing (never evaluated)'}"})})
    for text in gates:
        rows.append(_gate_row(text, candidate, holder, values, defaults))
    return {
        "candidate": candidate.ref, "current": holder.ref if holder else None, "passed": all(r["passed"] for r in rows),
        "gates": rows, "test_set": (candidate.eval or {}).get("test_set"),
        "current_test_set": (holder.eval or {}).get("test_set") if holder else None,
        "current_evaluated_on": (holder.eval or {}).get("evaluated_on") if holder else None,
        **({"current_metrics": holder.metrics} if holder is not None and (holder.eval or {}).get("evaluated_on") else {}),
    }


def _gate_row(text: str, candidate: VersionRecord, holder: VersionRecord | None, values: dict, defaults: bool) -> dict:
    expanded = expand_current(text)
    gate = parse_gate(expanded)
    current_names = [n for n in gate.names if n.startswith("current.")]
    own = [n for n in gate.names if not n.startswith("current.")]
    if defaults and any(values.get(n) is None for n in own):
        return {"gate": text, "passed": True, "skipped": True, "reason": f"not measured by {candidate.ref}: {', '.join(own)}"}
    if current_names and holder is None:
        return {"gate": text, "passed": True, "skipped": True, "reason": "no current holder to compare with"}
    for key, prefix in (("test_set", "current.task."), ("forgetting_suite", "current.forgetting.")):
        if any(n.startswith(prefix) for n in current_names):
            problem = _same_data(candidate, holder, key)
            if problem:
                return {"gate": text, "passed": False, "reason": f"cannot compare: {problem}"}
    row = evaluate([expanded], values)["gates"][0]
    row = {**row, "gate": text}
    if current_names:
        row["current"] = {n.removeprefix("current."): values.get(n) for n in current_names}
    return row


def refusal_message(evidence: dict, alias: str) -> str:
    """One line per failing gate, with the candidate's and the holder's numbers."""
    lines = [f"promotion of {evidence['candidate']} to '{alias}' refused"
             + (f" (current holder {evidence['current']})" if evidence["current"] else "") + ":"]
    for row in evidence["gates"]:
        if row["passed"]:
            continue
        if "reason" in row:
            lines.append(f"  - {row['gate']}: {row['reason']}")
            continue
        numbers = f"{evidence['candidate']} {_num(row['left'])}"
        for metric, value in (row.get("current") or {}).items():
            numbers += f", {evidence['current']} {_num(value)} ({metric})"
        lines.append(f"  - {row['gate']}: {numbers}; needed {_num(row['right'])}")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
