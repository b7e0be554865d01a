"""Read the decision off the rules' findings (tunekit.cost.advise), and write the starter recipe."""

from __future__ import annotations

from pathlib import Path

from tunekit.cost.advise import (
    ENOUGH_EXAMPLES,
    Advice,
    Finding,
    Situation,
    rule_cost,
    rule_examples,
    rule_format,
    rule_knowledge,
    rule_latency,
    rule_memory,
    rule_preferences,
    rule_privacy,
    rule_vocabulary,
    training_estimate,
)
from tunekit.cost.load import file_layer, merge_layers, validate
from tunekit.cost.prices import PriceTable
from tunekit.cost.starter import write_starter_recipes
from tunekit.errors import TunekitError


def _findings(s: Situation, prices: PriceTable) -> list[Finding]:
    rules = (rule_knowledge, rule_format, rule_latency, rule_privacy, rule_examples, rule_preferences, rule_vocabulary, rule_memory)
    found = [rule(s) for rule in rules]
    found.insert(4, rule_cost(s, prices))
    return [f for f in found if f is not None]


def _budget_finding(s: Situation, prices: PriceTable) -> Finding | None:
    if s.setup_budget is None:
        return None
    tokens, cost = training_estimate(s, prices)
    if cost <= s.setup_budget:
        return None
    return Finding("over_budget", "few_shot",
                   f"one training run is estimated at ${cost:,.2f} ({tokens:,.0f} tokens x {s.finetuned_model}'s training "
                   f"price), above the ${s.setup_budget:,.2f} setup budget", {"training_cost": cost, "setup_budget": s.setup_budget})  # fmt: skip


def _approach(findings: list[Finding]) -> str:
    points = {f.points_to for f in findings}
    rules = {f.rule for f in findings}
    # Retrieval puts the facts into every prompt anyway, so the tokens a fine-tune saves are not a
    # reason to tune when the knowledge rules point to RAG: only format, latency or privacy are.
    tune = any(f.points_to == "fine_tune" and not ("rag" in points and f.rule == "cost_at_volume") for f in findings)
    if "over_budget" in rules:
        return "few_shot"
    if "few_examples" in rules:
        return "distill_then_fine_tune" if tune else ("rag" if "rag" in points else "few_shot")
    if tune and "rag" in points:
        return "rag_and_fine_tune"
    if tune:
        return "fine_tune"
    if "rag" in points:
        return "rag"
    return "prompt"


SUMMARIES = {
    "prompt": "prompt a hosted model: nothing here pays for fine-tuning yet",
    "few_shot": "prompt with few-shot examples; fine-tune later if volume, format or privacy call for it",
    "distill_then_fine_tune": "prompt with few-shot examples now; distill more examples from a teacher, then fine-tune",
    "rag": "retrieval-augmented generation: keep the facts in documents and retrieve them per request",
    "fine_tune": "fine-tune",
    "rag_and_fine_tune": "fine-tune for the format and behaviour, and retrieve the changing facts (RAG)",
}


def _plan(approach: str, findings: list[Finding]) -> tuple[str | None, str | None, list[str]]:
    """(method, adapter, steps) for the approach and the kind-of-tuning findings."""
    points = {f.points_to for f in findings}
    if approach not in ("fine_tune", "rag_and_fine_tune", "distill_then_fine_tune"):
        return None, None, []
    adapter = "qlora" if "qlora" in points else "lora"
    method = "cpt+sft" if "cpt" in points else "sft"
    steps = []
    if approach == "distill_then_fine_tune":
        steps.append(f"distill labelled examples from a teacher model until you have about {ENOUGH_EXAMPLES}")
    if "cpt" in points:
        steps.append("continued pre-training (method cpt) on the in-domain text")
    steps.append(f"supervised fine-tuning (method sft, {adapter}) on the labelled examples")
    if "dpo" in points:
        steps.append("DPO (method dpo, dpo.init_from: the SFT run) on the preference pairs")
    if approach == "rag_and_fine_tune":
        steps.append("serve with retrieval: the tuned model answers from documents retrieved per request")
    return method, adapter, steps


def advise(
    situation: Situation, prices: PriceTable, recipe_out: Path | None = None, data_path: Path | None = None, overwrite: bool = False
) -> Advice:
    """The recommendation for `situation`, with every rule's reasons and numbers. For fine-tune
    answers, starter recipes are written at `recipe_out` (and next to it for CPT / DPO steps);
    an existing file there is an error unless `overwrite`."""
    for key in ("prompted_model", "finetuned_model"):  # an unknown model fails before any rule runs
        prices.api_model(getattr(situation, key), key)
    findings = _findings(situation, prices)
    over = _budget_finding(situation, prices)
    if over is not None:
        findings.append(over)
    approach = _approach(findings)
    if any(f.points_to == "rag" for f in findings):
        for f in findings:
            if f.rule == "cost_at_volume" and f.points_to == "fine_tune":
                f.text += " (set aside: with retrieval the facts fill each prompt anyway, so the saving is smaller)"
    method, adapter, steps = _plan(approach, findings)
    summary = SUMMARIES[approach]
    if approach in ("fine_tune", "rag_and_fine_tune"):
        summary += f" ({' then '.join(method.split('+'))}, {adapter}{', then DPO' if any(f.points_to == 'dpo' for f in findings) else ''})"
    advice = Advice(approach=approach, summary=summary, method=method, adapter=adapter, steps=steps, findings=findings)
    if recipe_out is not None and approach in ("fine_tune", "rag_and_fine_tune", "distill_then_fine_tune"):
        advice.recipes = [str(p) for p in write_starter_recipes(situation, advice, Path(recipe_out), data_path, overwrite)]
    return advice


def load_situation(situation_file: Path | None = None, flags=None) -> Situation:
    """A Situation from a YAML file and flags (flags win), each problem named with its key."""
    layers = ([file_layer(situation_file)] if situation_file is not None else []) + [flags or {}]
    data, sources = merge_layers(layers)
    if "task" not in data:
        raise TunekitError("task: required (what the model does)", hint="e.g. --task classification; choices: " + ", ".join(Situation.model_fields["task"].annotation.__args__))
    return validate(Situation, data, sources, "situation")
