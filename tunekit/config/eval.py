"""The `eval` section: task metrics (from the metric table), rules, target, forgetting suites, judge, gates.

Gate names are checked once the recipe's paths are anchored (tunekit.config.recipe), because the
categories a forgetting gate may name are read from the suite files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunekit.config.common import RecipePath, RecipeRelative, Section
from tunekit.config.metrics import METRICS, MetricName


class EvalRule(Section):
    name: str = Field(description="Name of the rule; its pass rate is the metric `task.rule.<name>`.")
    regex: str | None = Field(None, description="The reply must match this regex (re.search).")
    contains: str | None = Field(None, description="The reply must contain this text.")
    starts_with: str | None = Field(None, description="The reply must start with this text.")
    ends_with: str | None = Field(None, description="The reply must end with this text (e.g. a disclaimer).")

    @model_validator(mode="after")
    def _one_check(self) -> "EvalRule":
        given = [k for k in ("regex", "contains", "starts_with", "ends_with") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"rule '{self.name}' needs exactly one of regex, contains, starts_with, ends_with")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"rule '{self.name}': invalid regex: {exc}") from None
        return self


class EndpointConfig(Section):
    base_url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="Model name sent with each request (default: the run name, which `tunekit serve RUN` serves it under).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (none: a placeholder key).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one response.")


# The shipped suites live with the eval stage's data; named here by file, never imported, so the
# recipe can check a gate on one of their categories before anything of eval is loaded.
SUITES_DIR = Path(__file__).resolve().parents[1] / "eval" / "suites"
BUILTIN_SUITES = {"general": SUITES_DIR / "general.jsonl"}


def _is_suite_file(name: str) -> bool:
    """A suite entry is a file (anchored at the recipe's folder) when it looks like one, else a built-in name."""
    return "/" in name or name.endswith(".jsonl")


SuiteName = Annotated[str, RecipeRelative(is_path=_is_suite_file)]


def suite_path(name: str) -> Path:
    return BUILTIN_SUITES.get(name) or Path(name)


def suite_categories(suites: list[str]) -> list[str]:
    """Category names of the given suites (for gate names like forgetting.arithmetic_drop); unreadable lines are skipped."""
    found: dict[str, None] = {}
    for name in suites:
        path = suite_path(name)
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        found[json.loads(line).get("category")] = None
                    except (json.JSONDecodeError, AttributeError):
                        continue
    return [c for c in found if isinstance(c, str)]


class ForgettingConfig(Section):
    enabled: bool = Field(False, description="Score base and tuned on general-capability suites to measure forgetting.")
    suites: list[SuiteName] = Field(
        default_factory=lambda: ["general"], description="Built-in suite names (`general`) or paths of JSONL suite files."
    )
    max_items: int | None = Field(200, gt=0, description="Items used at most (spread over categories); none: every item.")
    batch_size: int = Field(32, gt=0, description="Suite items generated per batch.")
    warn_drop: float = Field(0.02, ge=0.0, le=1.0, description="A drop (base share right - tuned) from here on is a warning.")
    fail_drop: float = Field(0.05, ge=0.0, le=1.0, description="A drop above this is a failure.")


class JudgeConfig(Section):
    enabled: bool = Field(False, description="Ask an LLM judge (any OpenAI-compatible endpoint) to grade the answers.")
    base_url: str | None = Field(None, description="Base URL of the judge's OpenAI-compatible API.")
    model: str | None = Field(None, description="Judge model name.")
    api_key_env: str | None = Field(None, description="Environment variable holding the judge's API key.")
    mode: Literal["rubric", "pairwise", "both"] = Field(
        "both", description="`rubric`: score each answer 1-5; `pairwise`: tuned vs base, asked in both orders."
    )
    rubric: str = Field(
        "Is the answer correct, complete and in the requested format?", description="What the judge grades (rubric mode)."
    )
    max_items: int | None = Field(50, gt=0, description="Test examples judged at most.")
    max_tokens: int = Field(
        64, gt=0, description="Tokens the judge may write per verdict. Replies cut at it are counted (judge.truncated_share) and reported."
    )
    retries: int = Field(2, ge=0, description="Retries of a failed or unparseable judge call.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one judge response.")


class ContaminationConfig(Section):
    enabled: bool = Field(True, description="Flag test examples that also appear (exactly or nearly) in the training data.")
    near_threshold: float = Field(0.8, gt=0.0, le=1.0, description="MinHash Jaccard estimate from which an example is a near copy.")
    exclude: bool = Field(True, description="Leave flagged examples out of every score (they stay in predictions.jsonl).")


class EvalConfig(Section):
    metrics: list[MetricName] = Field(
        default_factory=lambda: ["exact_match", "json_valid", "field_accuracy"],
        description="Metrics computed on the test set. " + " ".join(f"`{m.name}`: {m.description}" for m in METRICS.values()),
    )
    compare_base: bool = Field(True, description="Also evaluate the untuned base model, side by side.")
    cache_base_answers: bool = Field(
        True,
        description="Keep the base model's answers under $TUNEKIT_HOME/answers and reuse them while the model files, "
        "prompts, decoding and machine are the same (the base does not change between runs).",
    )
    max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="Generation budget per test example (default: the longest test reference in tokens, plus a quarter "
        "and 16). Answers cut at the budget are counted (task.truncated_share) and reported.",
    )
    batch_size: int = Field(16, gt=0, description="Test examples generated per batch.")
    max_examples: int | None = Field(None, gt=0, description="Evaluate only the first N test examples.")
    temperature: float = Field(0.0, ge=0.0, description="0: greedy decoding; above 0: sampling seeded with `seed`.")
    seed: int = Field(0, description="Seed of sampled decoding.")
    target: Literal["auto", "adapter", "model", "merged", "endpoint"] = Field(
        "auto",
        description="What `tuned` is: the run's adapter/ (on the base), its full model/, export/merged/, or `endpoint`. "
        "`auto`: model/ if present, else adapter/.",
    )
    endpoint: EndpointConfig | None = Field(None, description="The OpenAI-compatible server scored when target is `endpoint`.")
    label_field: str | None = Field(None, description="classification: the label is this key of the JSON reply (default: data.analysis).")
    label_regex: str | None = Field(None, description="classification: the label is group 1 (or the match) of this regex.")
    json_schema: RecipePath | None = Field(None, description="JSON schema file for the `json_schema` metric.")
    rules: list[EvalRule] = Field(default_factory=list, description="Format rules for the `rules` metric.")
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig, description="Test items seen in training.")
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig, description="General-capability regression suite.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-judge scoring.")
    gates: list[str] = Field(
        default_factory=list,
        description="Ship gates, e.g. `task.json_valid >= 0.98`, `task.accuracy >= base + 0.2`, "
        "`forgetting.overall_drop <= 0.05`; any FAIL makes `tunekit eval`/`run` exit 1.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        problems = []
        if "json_schema" in self.metrics and self.json_schema is None:
            problems.append("metric json_schema needs eval.json_schema (a schema file)")
        if "rules" in self.metrics and not self.rules:
            problems.append("metric rules needs eval.rules")
        if self.target == "endpoint" and self.endpoint is None:
            problems.append("target: endpoint needs eval.endpoint (base_url)")
        if self.judge.enabled and not (self.judge.base_url and self.judge.model):
            problems.append("judge.enabled needs judge.base_url and judge.model")
        if self.forgetting.warn_drop > self.forgetting.fail_drop:
            problems.append("forgetting.warn_drop must not exceed forgetting.fail_drop")
        if self.label_regex is not None:
            try:
                re.compile(self.label_regex)
            except re.error as exc:
                problems.append(f"label_regex: invalid regex: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

