"""`advise(situation, prices) -> Advice`: prompt, few-shot, RAG or fine-tuning (and which kind), by
explicit rules. Each rule that fires leaves a `Finding` with its reason and the numbers behind it;
the decision is read off the findings, so every answer can be traced to the rules that made it.

The rules, in the words of the decision framework they encode:
- knowledge that changes often -> RAG (a fine-tune bakes in facts that go stale; retraining at
  that cadence costs a training run each time)
- format / style, latency, privacy, cost at volume -> fine-tune
- few labelled examples -> prompt (few-shot) or distill more examples from a teacher first
- preference data -> DPO after SFT
- domain vocabulary with enough in-domain text -> continued pre-training before SFT
- a GPU memory budget the bf16 base does not fit -> QLoRA
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunekit.cost.inputs import CostInputs
from tunekit.cost.prices import PriceTable
from tunekit.cost.report import cost_report
from tunekit.train.memory import NF4_DOUBLE_QUANT_BITS

Task = Literal["classification", "extraction", "structured_output", "style", "knowledge_qa", "chat", "summarization", "code", "other"]
Cadence = Literal["never", "yearly", "quarterly", "monthly", "weekly", "daily"]
Compliance = Literal["none", "gdpr", "hipaa", "on_prem", "air_gapped"]

RETRAINS_PER_YEAR = {"never": 0, "yearly": 1, "quarterly": 4, "monthly": 12, "weekly": 52, "daily": 365}
OFTEN = 12  # retrains a year from which knowledge belongs in retrieval, not in the weights
FEW_EXAMPLES = 100  # below this, few-shot prompting is the honest baseline
ENOUGH_EXAMPLES = 500  # a LoRA learns a format or style reliably from about here
MIN_PREFERENCE_PAIRS = 100
MIN_CPT_TOKENS = 1_000_000  # less in-domain text than this barely moves a base model's vocabulary
FAST_LATENCY_MS = 500  # a hosted frontier model's time to first token alone is often about this
PAYBACK_DAYS = 90  # cost at volume: the setup must pay back within a quarter
MIN_YEARLY_SAVINGS = 1000  # $: below this, the engineering time of a fine-tune costs more than it saves
HEADROOM = 1.2  # activations, adapter state, CUDA context: keep 20 % over the weights (see tunekit estimate)
FORMAT_TASKS = {"classification", "extraction", "structured_output", "style"}
SELF_HOST_ONLY = {"hipaa", "on_prem", "air_gapped"}


class Situation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Task = Field(description="What the model does.")
    knowledge_changes: Cadence = Field("never", description="How often the facts the answers rely on change.")
    labelled_examples: int = Field(0, ge=0, description="Input/answer pairs you have.")
    preference_pairs: int = Field(0, ge=0, description="Chosen/rejected answer pairs (thumbs, corrections, rankings).")
    daily_requests: float = Field(0, ge=0, description="Requests a day expected in production.")
    setup_budget: float | None = Field(None, ge=0, description="$ available for data and training.")
    latency_ms: float | None = Field(None, gt=0, description="Longest acceptable response time (p95), ms.")
    compliance: Compliance = Field("none", description="`hipaa`, `on_prem`, `air_gapped`: data must stay on your machines.")
    domain_vocabulary: bool = Field(False, description="The domain uses terms a general model does not know.")
    domain_text_tokens: int = Field(0, ge=0, description="Unlabelled in-domain text available, tokens.")
    gpu_memory_gib: float | None = Field(None, gt=0, description="GPU memory you can train on.")
    base_params_b: float = Field(8.0, gt=0, description="Size of the open base model you would tune, billions of parameters.")
    base_model: str = Field("smollm2-135m-instruct", description="Base model written into the starter recipe.")
    prompt_overhead_tokens: float = Field(1500, ge=0, description="Instructions and examples a prompted model needs per request.")
    request_tokens: float = Field(300, ge=0, description="Tokens of the request's own content.")
    output_tokens: float = Field(100, ge=0, description="Tokens per answer.")
    prompted_model: str = Field("gpt-4o", description="Hosted model you would prompt (price-table key).")
    finetuned_model: str = Field("ft:gpt-4o-mini", description="Hosted fine-tune priced as the fine-tuned side (price-table key).")
    epochs: float = Field(3, gt=0, description="Epochs of the training estimate.")


@dataclass
class Finding:
    rule: str
    points_to: str  # rag | fine_tune | few_shot | distill | dpo | cpt | qlora | lora | self_host | prompt
    text: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Advice:
    approach: str  # prompt | few_shot | distill_then_fine_tune | rag | fine_tune | rag_and_fine_tune
    summary: str
    method: str | None  # sft | cpt+sft, with dpo as a later step
    adapter: str | None  # lora | qlora | None
    steps: list[str]
    findings: list[Finding]
    recipes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- rules


def rule_knowledge(s: Situation) -> Finding | None:
    retrains = RETRAINS_PER_YEAR[s.knowledge_changes]
    if retrains >= OFTEN:
        return Finding("knowledge_changes_often", "rag",
                       f"the facts change {s.knowledge_changes}: a fine-tune would need {retrains} retrains a year to stay "
                       "current; retrieve them at request time (RAG) instead",
                       {"retrains_per_year": retrains, "threshold": OFTEN})  # fmt: skip
    if s.task == "knowledge_qa":
        return Finding("answers_need_facts", "rag",
                       "answers rest on facts: retrieval cites its sources and is updated by editing documents; "
                       "fine-tuning teaches form, not reliable recall", {"retrains_per_year": retrains})  # fmt: skip
    return None


def rule_format(s: Situation) -> Finding | None:
    if s.task in FORMAT_TASKS:
        return Finding("format_or_style", "fine_tune",
                       f"{s.task} is a fixed output format or style: a tuned model follows it without the "
                       f"{s.prompt_overhead_tokens:,.0f} tokens of instructions and examples on every request",
                       {"prompt_overhead_tokens": s.prompt_overhead_tokens})  # fmt: skip
    return None


def rule_latency(s: Situation) -> Finding | None:
    if s.latency_ms is not None and s.latency_ms <= FAST_LATENCY_MS:
        return Finding("latency", "fine_tune",
                       f"a {s.latency_ms:,.0f} ms budget leaves no room for a large hosted model's queue and time to first "
                       "token; a small tuned model served close to the caller fits it",
                       {"latency_ms": s.latency_ms, "threshold_ms": FAST_LATENCY_MS})  # fmt: skip
    return None


def rule_privacy(s: Situation) -> Finding | None:
    if s.compliance in SELF_HOST_ONLY:
        return Finding("privacy", "fine_tune",
                       f"compliance {s.compliance}: requests may not go to a third-party API, so the model runs on your "
                       "machines, and a small open model needs tuning to do the task well", {"compliance": s.compliance})  # fmt: skip
    if s.compliance == "gdpr":
        return Finding("gdpr", "prompt", "gdpr: a hosted API with an EU data-processing agreement remains possible; "
                       "self-hosting a tuned model removes the question", {"compliance": s.compliance})  # fmt: skip
    return None


def training_estimate(s: Situation, prices: PriceTable) -> tuple[float, float]:
    """(training tokens, $) of a hosted fine-tune of the labelled examples."""
    tokens = max(s.labelled_examples, ENOUGH_EXAMPLES) * (s.request_tokens + s.output_tokens) * s.epochs
    rate = prices.api_model(s.finetuned_model, "finetuned_model").training_per_m or 0.0
    return tokens, tokens * rate / 1e6


def rule_cost(s: Situation, prices: PriceTable) -> Finding | None:
    finding = _cost_finding(s, prices)
    if finding is not None and s.compliance in SELF_HOST_ONLY:
        finding.text += (f" (both priced as hosted APIs, which compliance {s.compliance} rules out: price self-hosting with "
                         "`tunekit cost --benchmark FILE --serve-gpu GPU`)")  # fmt: skip
    return finding


def _cost_finding(s: Situation, prices: PriceTable) -> Finding | None:
    if s.daily_requests <= 0:
        return None
    tokens, train_cost = training_estimate(s, prices)
    inputs = CostInputs.model_validate({
        "traffic": {"requests_per_day": s.daily_requests, "overhead_tokens": s.prompt_overhead_tokens,
                    "input_tokens": s.request_tokens, "output_tokens": s.output_tokens},
        "prompted": {"model": s.prompted_model},
        "finetuned": {"hosting": "api", "model": s.finetuned_model},
        "training": {"cost": train_cost},
        "data": {"cost": 0},
    })  # fmt: skip
    report = cost_report(inputs, prices)
    numbers = {
        "prompted_per_request": report.prompted_per_request, "finetuned_per_request": report.finetuned_per_request,
        "training_tokens": tokens, "training_cost": train_cost, "break_even_requests": report.break_even_requests,
        "break_even_days": report.break_even_days, "savings_12_months": report.savings_total, "prices_as_of": report.prices_as_of,
    }  # fmt: skip
    if report.never:
        return Finding("cost_at_volume", "prompt", f"{s.finetuned_model} costs as much per request as prompting "
                       f"{s.prompted_model}: no saving at any volume", numbers)  # fmt: skip
    if report.savings_total < MIN_YEARLY_SAVINGS:
        return Finding("cost_at_volume", "prompt", f"at {s.daily_requests:,.0f} requests/day a fine-tune saves "
                       f"${report.savings_total:,.0f} over 12 months, under ${MIN_YEARLY_SAVINGS:,}: not worth the work on cost alone",
                       {**numbers, "min_yearly_savings": MIN_YEARLY_SAVINGS})  # fmt: skip
    if report.break_even_days <= PAYBACK_DAYS:
        return Finding("cost_at_volume", "fine_tune",
                       f"at {s.daily_requests:,.0f} requests/day a {s.finetuned_model} fine-tune pays back its "
                       f"${train_cost:,.2f} training in {_days(report.break_even_days)} and saves "
                       f"${report.savings_total:,.0f} over 12 months against prompting {s.prompted_model}",
                       {**numbers, "threshold_days": PAYBACK_DAYS})  # fmt: skip
    return Finding("cost_at_volume", "prompt", f"at {s.daily_requests:,.0f} requests/day the fine-tune pays back only after "
                   f"{report.break_even_days:,.0f} days (more than {PAYBACK_DAYS}): cost alone does not justify it", numbers)  # fmt: skip


def _days(days: float) -> str:
    return f"{days * 24:,.1f} hours" if days < 1 else f"{days:,.1f} days"


def rule_examples(s: Situation) -> Finding | None:
    n = s.labelled_examples
    if n < FEW_EXAMPLES:
        return Finding("few_examples", "few_shot",
                       f"{n} labelled examples: put the best of them in the prompt (few-shot) and measure; to fine-tune, "
                       f"distill about {ENOUGH_EXAMPLES} examples from a teacher model first",
                       {"labelled_examples": n, "few_below": FEW_EXAMPLES, "enough_from": ENOUGH_EXAMPLES})  # fmt: skip
    if n < ENOUGH_EXAMPLES:
        return Finding("thin_examples", "distill",
                       f"{n} labelled examples are enough for a first LoRA, but distilling up to {ENOUGH_EXAMPLES} with a "
                       "teacher makes it reliable", {"labelled_examples": n, "enough_from": ENOUGH_EXAMPLES})  # fmt: skip
    return None


def rule_preferences(s: Situation) -> Finding | None:
    if s.preference_pairs >= MIN_PREFERENCE_PAIRS:
        return Finding("preference_data", "dpo",
                       f"{s.preference_pairs:,} preference pairs: train DPO on top of the SFT adapter (SFT first teaches "
                       "the task; DPO then moves it towards the chosen answers)",
                       {"preference_pairs": s.preference_pairs, "threshold": MIN_PREFERENCE_PAIRS})  # fmt: skip
    return None


def rule_vocabulary(s: Situation) -> Finding | None:
    if not s.domain_vocabulary:
        return None
    if s.domain_text_tokens >= MIN_CPT_TOKENS:
        return Finding("domain_vocabulary", "cpt",
                       f"domain vocabulary and {s.domain_text_tokens:,} tokens of in-domain text: continue pre-training on "
                       "it, then run SFT on the result",
                       {"domain_text_tokens": s.domain_text_tokens, "threshold": MIN_CPT_TOKENS})  # fmt: skip
    return Finding("domain_vocabulary_thin", "fine_tune",
                   f"domain vocabulary, but {s.domain_text_tokens:,} tokens of in-domain text are too few for continued "
                   "pre-training; SFT (and retrieval for definitions) will have to carry it",
                   {"domain_text_tokens": s.domain_text_tokens, "threshold": MIN_CPT_TOKENS})  # fmt: skip


def memory_need_gib(params_b: float) -> dict[str, float]:
    """Weights plus headroom, GiB: bf16 for LoRA, NF4 with double quantization for QLoRA."""
    params = params_b * 1e9
    return {
        "lora": round(params * 2 * HEADROOM / 2**30, 1),
        "qlora": round(params * NF4_DOUBLE_QUANT_BITS / 8 * HEADROOM / 2**30, 1),
    }


def rule_memory(s: Situation) -> Finding | None:
    if s.gpu_memory_gib is None:
        return None
    need = memory_need_gib(s.base_params_b)
    numbers = {"gpu_memory_gib": s.gpu_memory_gib, "base_params_b": s.base_params_b, "lora_gib": need["lora"], "qlora_gib": need["qlora"]}
    if need["lora"] <= s.gpu_memory_gib:
        return Finding("memory_fits_lora", "lora", f"a base of {s.base_params_b:g}B parameters in bf16 needs about {need['lora']} GiB with "
                       f"headroom, within {s.gpu_memory_gib:g} GiB: plain LoRA", numbers)  # fmt: skip
    if need["qlora"] <= s.gpu_memory_gib:
        return Finding("memory_budget", "qlora",
                       f"a base of {s.base_params_b:g}B parameters needs about {need['lora']} GiB in bf16 but {need['qlora']} GiB in 4-bit "
                       f"NF4: QLoRA fits {s.gpu_memory_gib:g} GiB (CUDA + bitsandbytes)", numbers)  # fmt: skip
    return Finding("memory_too_small", "qlora",
                   f"even QLoRA of a base of {s.base_params_b:g}B parameters needs about {need['qlora']} GiB, more than "
                   f"{s.gpu_memory_gib:g} GiB: pick a smaller base or rent a GPU for the run", numbers)  # fmt: skip
