"""The gate language, checked when a recipe is loaded: `task.json_valid >= 0.98`, `task.accuracy >= base + 0.2`.

A gate is one comparison between two arithmetic expressions over numbers and metric names. It is
parsed by a small recursive-descent parser (never `eval`): names, numbers, + - * /, parentheses,
and one of >= <= > < == !=. The bare name `base` stands for the base model's value of the one
metric on the left (`task.accuracy >= base + 0.2` means `>= base.task.accuracy + 0.2`).

The names a gate may use come from the metric table and the eval section (with its suite files
already anchored at the recipe's folder); `tunekit.eval.gates` evaluates parsed gates on measured values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunekit.config.eval import suite_categories
from tunekit.config.metrics import task_names

COMPARISONS = (">=", "<=", "==", "!=", ">", "<")
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|(?P<name>[A-Za-z_][\w.\-]*[\w])|(?P<op>>=|<=|==|!=|[-+*/()<>]))")


class GateSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Gate:
    text: str
    left: tuple
    op: str
    right: tuple

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(_names(self.left) + _names(self.right)))


def _names(node: tuple) -> list[str]:
    if node[0] == "name":
        return [node[1]]
    if node[0] in ("add", "sub", "mul", "div"):
        return _names(node[1]) + _names(node[2])
    if node[0] == "neg":
        return _names(node[1])
    return []


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise GateSyntaxError(f"unexpected text at '{text[pos:].strip()}'")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens, self.pos = _tokens(text), 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise GateSyntaxError("the expression ends too early")
        self.pos += 1
        return token

    def sum(self) -> tuple:
        node = self.product()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            node = ("add" if op == "+" else "sub", node, self.product())
        return node

    def product(self) -> tuple:
        node = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            node = ("mul" if op == "*" else "div", node, self.unary())
        return node

    def unary(self) -> tuple:
        kind, value = self.take()
        if (kind, value) == ("op", "-"):
            return ("neg", self.unary())
        if (kind, value) == ("op", "("):
            node = self.sum()
            if self.take() != ("op", ")"):
                raise GateSyntaxError("a '(' is not closed")
            return node
        if kind == "num":
            return ("num", float(value))
        if kind == "name":
            return ("name", value)
        raise GateSyntaxError(f"expected a number or a metric name, got '{value}'")


def parse_gate(text: str) -> Gate:
    """Parse one gate; GateSyntaxError says what is wrong."""
    parser = _Parser(text)
    left = parser.sum()
    token = parser.peek()
    if token is None or token[1] not in COMPARISONS:
        raise GateSyntaxError("a gate needs a comparison (>=, <=, >, <, ==, !=) after its left side")
    op = parser.take()[1]
    right = parser.sum()
    if parser.peek() is not None:
        raise GateSyntaxError(f"unexpected '{parser.peek()[1]}' after the right side")
    gate = Gate(text.strip(), left, op, right)
    if "base" in gate.names:
        lhs = [n for n in _names(left) if n != "base"]
        if len(lhs) != 1 or lhs[0].startswith("base."):
            raise GateSyntaxError("`base` needs exactly one (non-base) metric on the left side")
        gate = Gate(gate.text, left, op, _replace_base(right, "base." + lhs[0]))
    return gate


def _replace_base(node: tuple, name: str) -> tuple:
    if node == ("name", "base"):
        return ("name", name)
    if node[0] in ("add", "sub", "mul", "div"):
        return (node[0], _replace_base(node[1], name), _replace_base(node[2], name))
    if node[0] == "neg":
        return ("neg", _replace_base(node[1], name))
    return node


# ------------------------------------------------------------------ names known before running


def known_metric_names(cfg) -> list[str]:
    """Every metric name a gate may use with this eval config (an EvalConfig whose suite paths are anchored)."""
    task = [f"task.{n}" for n in task_names(list(cfg.metrics), [r.name for r in cfg.rules], logits=cfg.target != "endpoint")]
    names = list(task)
    if cfg.compare_base:
        names += [f"base.{n}" for n in task]
    if cfg.contamination.enabled:
        names += ["contamination.flagged"]
    # Measured when the run was trained on preference pairs (scored on held-out pairs instead of a task).
    names += ["preference.accuracy", "preference.margin_mean", "preference.prefers_chosen", "base.preference.prefers_chosen"]
    if cfg.forgetting.enabled:
        names += ["forgetting.overall", "forgetting.overall_drop", "base.forgetting.overall"]
        for category in suite_categories(cfg.forgetting.suites):
            names += [f"forgetting.{category}", f"forgetting.{category}_drop", f"base.forgetting.{category}"]
    if cfg.judge.enabled:
        if cfg.judge.mode in ("rubric", "both"):
            names += ["judge.rubric_mean", "judge.failures"] + (["base.judge.rubric_mean"] if cfg.compare_base else [])
        if cfg.judge.mode in ("pairwise", "both") and cfg.compare_base:
            names += ["judge.win_rate", "judge.loss_rate", "judge.tie_rate", "judge.order_agreement"]
        names = list(dict.fromkeys(names + ["judge.failures", "judge.truncated_share"]))
    return names


def gate_problems(cfg) -> list[str]:
    """Problems of `eval.gates` (syntax, unknown metric names), each with its key path."""
    problems = []
    known = None
    for index, text in enumerate(cfg.gates):
        where = f"[{index}] '{text}'"
        try:
            gate = parse_gate(text)
        except GateSyntaxError as exc:
            problems.append(f"{where}: {exc}")
            continue
        known = known if known is not None else known_metric_names(cfg)
        unknown = [n for n in gate.names if n not in known]
        if unknown:
            problems.append(f"{where}: unknown metric {', '.join(unknown)}; known here: {', '.join(known)}")
    return problems


