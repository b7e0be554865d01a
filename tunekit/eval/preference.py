"""Preference metrics for a run trained on chosen/rejected pairs: how often each model puts more
probability on the chosen answer than on the rejected one, on held-out pairs.

DPO's implicit reward of an answer is log π_tuned(answer) − log π_base(answer); `accuracy` is the
share of pairs where the chosen answer's reward beats the rejected one's (TRL's
`rewards/accuracies`, here on held-out pairs), `margin_mean` the mean difference of the two
rewards in nats. `prefers_chosen` is the plain share of pairs where a model gives the chosen
answer the higher log-likelihood, for the tuned model and for the base.
"""

from __future__ import annotations

from statistics import mean

from tunekit.runs import read_jsonl


def answer_text(messages) -> str:
    """The answer of a prepared preference row's `chosen` / `rejected` (assistant messages)."""
    if isinstance(messages, str):
        return messages
    return "".join(m["content"] for m in messages if m.get("role") == "assistant") or "".join(m["content"] for m in messages)


def load_pairs(path) -> list[dict]:
    return [row for row in read_jsonl(path) if "chosen" in row and "rejected" in row]


def preference_metrics(sides: dict, pairs: list[dict], batch_size: int) -> tuple[dict, list[dict]]:
    """({"n", "accuracy", "margin_mean", "prefers_chosen", "base_prefers_chosen"}, per-pair rows)."""
    prompts = [row["prompt"] for row in pairs]
    logp = {}
    for name in ("tuned", "base"):
        side = sides.get(name)
        if side is None or not side.local:
            continue
        for which in ("chosen", "rejected"):
            scored = side.nll(prompts, [answer_text(row[which]) for row in pairs], batch_size)
            logp[(name, which)] = [-nll for nll, _ in scored]
    rows = []
    for i in range(len(pairs)):
        row = {"index": i, **{f"{name}_{which}_logp": values[i] for (name, which), values in logp.items()}}
        rows.append(row)
    summary: dict = {"n": len(pairs)}
    if ("tuned", "chosen") in logp:
        summary["prefers_chosen"] = mean(r["tuned_chosen_logp"] > r["tuned_rejected_logp"] for r in rows)
    if ("base", "chosen") in logp:
        summary["base_prefers_chosen"] = mean(r["base_chosen_logp"] > r["base_rejected_logp"] for r in rows)
        if ("tuned", "chosen") in logp:
            margins = [
                (r["tuned_chosen_logp"] - r["base_chosen_logp"]) - (r["tuned_rejected_logp"] - r["base_rejected_logp"]) for r in rows
            ]
            for row, margin in zip(rows, margins):
                row["reward_margin"] = margin
            summary["accuracy"] = mean(m > 0 for m in margins)
            summary["margin_mean"] = mean(margins)
    return summary, rows


def flat(summary: dict | None) -> dict:
    """The numbers a gate can name: preference.accuracy, preference.margin_mean, preference.prefers_chosen,
    base.preference.prefers_chosen."""
    if not summary:
        return {}
    values = {f"preference.{k}": summary[k] for k in ("accuracy", "margin_mean", "prefers_chosen") if k in summary}
    if "base_prefers_chosen" in summary:
        values["base.preference.prefers_chosen"] = summary["base_prefers_chosen"]
    return values
