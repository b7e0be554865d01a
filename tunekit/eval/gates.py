"""Ship gates evaluated on measured values: the verdict of every gate, and the overall decision.

The gate language (parsing, and the names a gate may use, checked when the recipe is loaded) is
`tunekit.config.gates`.
"""

from __future__ import annotations

from tunekit.config.gates import parse_gate
from tunekit.errors import TunekitError


def _value(node: tuple, values: dict) -> float | None:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "name":
        value = values.get(node[1])
        return None if value is None else float(value)
    if kind == "neg":
        inner = _value(node[1], values)
        return None if inner is None else -inner
    a, b = _value(node[1], values), _value(node[2], values)
    if a is None or b is None or (kind == "div" and b == 0):
        return None
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if b else None}[kind]


def _compare(a: float, op: str, b: float) -> bool:
    return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": abs(a - b) < 1e-12, "!=": abs(a - b) >= 1e-12}[op]


def evaluate(gates: list[str], values: dict) -> dict:
    """The verdict: every gate with its two sides, PASS/FAIL, and the overall decision."""
    rows = []
    for text in gates:
        gate = parse_gate(text)
        left, right = _value(gate.left, values), _value(gate.right, values)
        if left is None or right is None:
            missing = [n for n in gate.names if values.get(n) is None]
            rows.append({"gate": text, "left": left, "right": right, "passed": False,
                         "reason": f"not measured: {', '.join(missing) or 'division by zero'}"})
        else:
            rows.append({"gate": text, "left": left, "right": right, "passed": _compare(left, gate.op, right)})
    return {"passed": all(r["passed"] for r in rows), "gates": rows, "n_failed": sum(not r["passed"] for r in rows)}


class GateFailure(TunekitError):
    """At least one ship gate failed: the model must not be promoted."""
