"""The forgetting suite: general-capability items the tuned model never saw, scored automatically.

The shipped suite `general` (tunekit/eval/suites/general.jsonl, built by build_general.py) holds
790 arithmetic, reasoning, knowledge, instruction-following, refusal and code items. Base and
tuned answer the same items; a tuned model that answers fewer of them right has forgotten
something. Items are not filtered by the base's answers (see build_general.py for why). Users
add their own suites as JSONL files in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tunekit.config.eval import BUILTIN_SUITES, suite_path
from tunekit.errors import DataError
from tunekit.eval.generation import Decoding, Generations
from tunekit.eval.scorers import check_problem, score_item

DEFAULT_MAX_NEW_TOKENS = 32

Answer = Callable[[list[list[dict]], Decoding, str], Generations]


def load_suite(name: str) -> list[dict]:
    """Items of a built-in suite (by name) or of a user's JSONL file, every line checked."""
    path = suite_path(name)
    if not path.is_file():
        raise DataError(
            f"eval.forgetting.suites: suite '{name}' not found",
            hint=f"use a built-in suite ({', '.join(BUILTIN_SUITES)}) or the path of a JSONL suite file",
        )
    items, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        problem = _item_problem(item)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        item.setdefault("id", f"{path.stem}-{number}")
        item["suite"] = name
        items.append(item)
    if problems:
        raise DataError(f"{path}: {len(problems)} bad suite item(s): " + "; ".join(problems[:5]), hint="fix the lines named")
    return items


def _item_problem(item) -> str | None:
    if not isinstance(item, dict):
        return "an item must be a JSON object"
    if not isinstance(item.get("category"), str):
        return "category (a string) is missing"
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        return "messages must be a non-empty list of {role, content}"
    return check_problem(item.get("check"))


def select(items: list[dict], max_items: int | None) -> list[dict]:
    """At most `max_items`, taken round-robin over categories so every category stays represented."""
    if not max_items or len(items) <= max_items:
        return items
    by_category: dict[str, list[dict]] = {}
    for item in items:
        by_category.setdefault(item["category"], []).append(item)
    chosen, queues = [], [list(q) for q in by_category.values()]
    while len(chosen) < max_items:
        for queue in queues:
            if queue and len(chosen) < max_items:
                chosen.append(queue.pop(0))
    order = {id(item): i for i, item in enumerate(items)}
    return sorted(chosen, key=lambda item: order[id(item)])


def answer_items(answer: Answer, items: list[dict], decoding: Decoding, label: str) -> tuple[list[str], list[str]]:
    """Outputs for suite items and their finish reasons ("length": cut at the budget); items are
    grouped by their own `max_new_tokens` budget."""
    outputs: list[str] = [""] * len(items)
    finish: list[str] = ["stop"] * len(items)
    budgets = sorted({item.get("max_new_tokens", decoding.max_new_tokens) for item in items})
    for budget in budgets:
        indices = [i for i, item in enumerate(items) if item.get("max_new_tokens", decoding.max_new_tokens) == budget]
        step = Decoding(budget, decoding.batch_size, decoding.temperature, decoding.seed)
        generations = answer([items[i]["messages"] for i in indices], step, f"{label} ({len(indices)} items)")
        for row, i in enumerate(indices):
            outputs[i] = generations.outputs[row]
            finish[i] = generations.finish[row] if generations.finish else "stop"
    return outputs, finish


def verdict_of(drop: float | None, warn: float, fail: float) -> str:
    if drop is None:
        return "n/a"
    return "fail" if drop > fail else "warn" if drop >= warn else "ok"


def summarize(items: list[dict], correct: dict[str, list[bool]], *, warn: float, fail: float) -> dict:
    """Per category and overall: share right per model, the drop (base - tuned) and its verdict."""
    names = list(dict.fromkeys(item["category"] for item in items))

    def share(model: str, keep) -> float | None:
        picked = [ok for item, ok in zip(items, correct.get(model, [])) if keep(item)]
        return sum(picked) / len(picked) if picked else None

    def block(keep, n: int) -> dict:
        row = {"n": n, **{model: share(model, keep) for model in correct}}
        base, tuned = row.get("base"), row.get("tuned")
        row["drop"] = None if base is None or tuned is None else round(base - tuned, 6)
        row["verdict"] = verdict_of(row["drop"], warn, fail)
        return row

    per_category = {name: block(lambda item, n=name: item["category"] == n, sum(i["category"] == name for i in items)) for name in names}
    overall = block(lambda item: True, len(items))
    return {"overall": overall, "categories": per_category, "thresholds": {"warn": warn, "fail": fail}}
