"""The recipe: one YAML file that drives every stage.

Defaults live here, once, each with a help string. Relative paths in a recipe are resolved
against the directory of the recipe file, so a recipe and its data travel together.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, PrivateAttr, ValidationError, field_validator, model_validator

from tunekit.errors import RecipeError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PiiType = Literal["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"]
ALL_PII_TYPES: list = ["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"]


class CleanConfig(_Section):
    normalize_unicode: Literal["none", "NFC", "NFKC"] = Field("NFC", description="Unicode normalisation applied to every content string.")
    normalize_whitespace: bool = Field(
        True, description="Strip contents and collapse runs of spaces/tabs (newlines are kept)."
    )
    near_dedup: bool = Field(True, description="Drop near-duplicates found with MinHash LSH (the first occurrence is kept).")
    near_threshold: float = Field(0.7, gt=0.0, le=1.0, description="Estimated Jaccard similarity at which two rows are near-duplicates.")
    minhash_permutations: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: more accurate, slower).")
    shingle_size: int = Field(3, ge=1, le=20, description="Word n-gram size of the MinHash shingles.")
    semantic_dedup: bool = Field(
        False, description="Also drop rows whose sentence embeddings are closer than `semantic_threshold` (extra: tunekit[semantic])."
    )
    semantic_threshold: float = Field(0.95, gt=0.0, le=1.0, description="Cosine similarity for semantic duplicates.")
    pii: Literal["off", "report", "redact", "drop"] = Field(
        "report",
        description="Personal data and secrets: `report` counts them, `redact` replaces them with typed placeholders "
        "([EMAIL] ...), `drop` quarantines the row, `off` skips the scan.",
    )
    pii_types: list[PiiType] = Field(default_factory=lambda: list(ALL_PII_TYPES), description="Kinds of PII to look for.")


class ConsistencyRule(_Section):
    name: str = Field(description="Name shown in the report.")
    regex: str | None = Field(None, description="Every assistant reply must match this regex (re.search).")
    ends_with: str | None = Field(None, description="Every assistant reply must end with this text.")
    # Written `json:` in recipes; named otherwise here because `json` shadows a BaseModel method.
    parses_as_json: bool = Field(False, alias="json", description="Every assistant reply must parse as JSON.")
    json_schema: Path | None = Field(None, description="Every assistant reply must validate against this JSON schema file.")

    @model_validator(mode="after")
    def _one_check(self) -> "ConsistencyRule":
        given = [k for k in ("regex", "ends_with", "json_schema") if getattr(self, k) is not None]
        given += ["json"] if self.parses_as_json else []
        if len(given) != 1:
            raise ValueError("a rule needs exactly one of regex, ends_with, json: true, json_schema")
        return self


class AnalysisConfig(_Section):
    label_field: str | None = Field(None, description="Label of a row: this key of the JSON assistant reply (e.g. category).")
    label_regex: str | None = Field(None, description="Label of a row: group 1 (or the match) of this regex on the assistant reply.")
    max_label_share: float = Field(0.5, gt=0.0, le=1.0, description="Warn when the largest label holds more than this share.")
    rules: list[ConsistencyRule] = Field(default_factory=list, description="Checks every assistant reply must pass.")
    diversity: bool = Field(False, description="Cluster embedded user turns and judge diversity (extra: tunekit[semantic]).")
    diversity_clusters: int | None = Field(None, gt=1, description="KMeans clusters (default: about sqrt(rows/2), 2..50).")


class DataGates(_Section):
    min_examples: int | None = Field(None, gt=0, description="Fail when fewer training rows remain.")
    max_duplicate_share: float | None = Field(None, ge=0.0, le=1.0, description="Fail when more of the input were duplicates.")
    max_quarantine_share: float | None = Field(None, ge=0.0, le=1.0, description="Fail when more of the input was quarantined.")
    max_label_share: float | None = Field(None, gt=0.0, le=1.0, description="Fail when the largest label holds more.")
    require_diversity: Literal["GOOD"] | None = Field(None, description="Fail unless the diversity verdict is GOOD.")


HUB_PREFIX = "hf://"


class HubDataset(str):
    """A Hugging Face hub dataset named in a recipe: `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]`.

    It stands where a data path stands, so it answers the few Path questions recipe code asks:
    it is never anchored to the recipe's folder (`is_absolute`), and it `exists` as far as the
    recipe check goes (whether the hub has it is known only when it is loaded), but it is no file
    or directory. The split defaults to the recipe key's own: train, validation (data.eval), test."""

    repo: str
    config: str | None
    revision: str | None
    split: str | None

    def __new__(cls, spec: str) -> "HubDataset":
        self = super().__new__(cls, spec)
        rest = spec[len(HUB_PREFIX) :]
        rest, colon, split = rest.partition(":")  # the split may hold colons itself: train[:10%]
        rest, at, revision = rest.partition("@")
        self.split, self.revision = (split if colon else None), (revision if at else None)
        parts = rest.split("/")
        if not spec.startswith(HUB_PREFIX) or len(parts) not in (2, 3) or not all(parts) or self.split == "" or self.revision == "":
            raise ValueError(f"`{spec}` is not a hub dataset id; write hf://OWNER/NAME, optionally /CONFIG, @REVISION and :SPLIT")
        self.repo, self.config = "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)
        return self

    name = property(str.__str__, doc="How the data is named in reports and row meta: the id as written.")
    suffix = ""

    def is_absolute(self) -> bool:
        return True

    def exists(self) -> bool:
        return True

    def is_file(self) -> bool:
        return False

    def is_dir(self) -> bool:
        return False

    def resolve(self) -> "HubDataset":
        return self


def _data_source(value: Any) -> Path | HubDataset:
    """A data input: `hf://...` is a hub dataset, anything else a local path."""
    if isinstance(value, HubDataset):
        return value
    if isinstance(value, str) and value.startswith(HUB_PREFIX):
        return HubDataset(value)
    if isinstance(value, (str, Path)):
        return Path(value)
    raise ValueError("must be a file path or a hub dataset id (hf://OWNER/NAME)")


DataSource = Annotated[Path | HubDataset, PlainValidator(_data_source), PlainSerializer(str)]
_HUB_HELP = " A hub dataset is `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]` (loaded with `datasets`; needs the hub or its cache)."


class DataConfig(_Section):
    train: DataSource = Field(
        description="Training data: a JSONL, JSON-array, CSV or Parquet file, or a saved Hugging Face dataset directory." + _HUB_HELP
    )
    eval: DataSource | None = Field(None, description="Optional validation file; when absent, `val_fraction` of train is held out.")
    test: DataSource | None = Field(None, description="Optional held-out test file for `tunekit eval`; when absent, `test_fraction` of train is held out.")
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "preference", "text"] = Field(
        "auto", description="Row format; `auto` detects it per row and refuses files that mix formats."
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train held out for validation when `eval` is not given.")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of train held out for testing when `test` is not given.")
    seed: int = Field(42, description="Seed of the deterministic train/val/test split.")
    dedup: bool = Field(True, description="Drop exact duplicate examples (the first occurrence is kept).")
    max_length: int = Field(1024, gt=0, description="Longest example in tokens under the model's chat template.")
    over_length: Literal["drop", "truncate", "error"] = Field(
        "drop", description="What to do with examples longer than `max_length`: drop to quarantine, truncate in training, or stop."
    )
    on_invalid: Literal["error", "quarantine"] = Field(
        "error",
        description="Lines that fail validation (broken JSON, bad roles, empty content): `error` stops and lists them; "
        "`quarantine` sets them aside in quarantine.jsonl and trains on the rest.",
    )
    system_prompt: str | None = Field(None, description="System prompt added to examples that have none (also used at eval).")
    split: Literal["random", "stratified", "grouped"] = Field(
        "random", description="How held-out rows are chosen: at random, stratified by label, or by `group_key` groups."
    )
    group_key: str | None = Field(None, description="Top-level field of the input rows that groups them (for split: grouped).")
    external_eval: list[Path] = Field(
        default_factory=list, description="Other eval files to check for leakage (exact and near-duplicate) against training."
    )
    remove_leaks: bool = Field(True, description="Remove training rows that leak into held-out or external eval data.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Normalisation, near-dedup and PII.")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="Labels, consistency rules, diversity.")
    gates: DataGates = Field(default_factory=DataGates, description="Data checks that stop `tunekit run` before training.")

    @model_validator(mode="after")
    def _grouped_needs_a_key(self) -> "DataConfig":
        if self.split == "grouped" and not self.group_key:
            raise ValueError("split: grouped needs group_key")
        if self.split == "stratified" and not (self.analysis.label_field or self.analysis.label_regex):
            raise ValueError("split: stratified needs analysis.label_field or analysis.label_regex")
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class LoraConfig(_Section):
    r: int = Field(
        16,
        gt=0,
        description="LoRA rank: the adapter's capacity. 8-16 teaches a format, style or task; 32-64 adds domain knowledge; "
        "above 128 rarely helps and costs memory.",
    )
    alpha: int = Field(
        32,
        gt=0,
        description="LoRA scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with rslora). "
        "About 2 x r is a common start; keep alpha / r fixed when you change r.",
    )
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input: 0.05-0.1 helps small datasets, 0 is fine for large ones."
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules to adapt: `all-linear` (every linear layer but the output head; learns the most) or a "
        "list of module names (e.g. [q_proj, k_proj, v_proj, o_proj]: about a third of the adapter size).",
    )


DpoLossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]  # fmt: skip  (the loss types of TRL 1.16's DPOConfig)


class DpoConfig(_Section):
    beta: float = Field(
        0.1, gt=0, description="Strength of the pull towards the reference model (higher: stay closer to it; IPO's tau)."
    )
    loss_type: DpoLossType = Field("sigmoid", description="Preference loss: `sigmoid` is the original DPO; see TRL for the others.")
    init_from: Path | None = Field(
        None,
        description="Start from an earlier run instead of the base model: its run directory, its `adapter/` or its "
        "`model/`. The starting point is also the reference model. Default: the base model.",
    )


class MixConfig(_Section):
    file: Path = Field(description="General data mixed into training to limit forgetting (any input format tunekit reads).")
    ratio: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the final training set drawn from `file` (0.2: one row in five).")
    seed: int = Field(42, description="Seed of the random choice of mixed rows.")


class FastConfig(_Section):
    """Speed switches of the CUDA fast path (tunekit.train.fastpath). On CPU none of them applies."""

    enabled: bool = Field(True, description="Use the fast path when training on a CUDA GPU (no effect on CPU).")
    liger: bool = Field(
        True, description="Liger Triton kernels (RMSNorm, SwiGLU, RoPE) on supported architectures (extra: tunekit[gpu])."
    )
    padding_free: bool = Field(
        True,
        description="Concatenate the examples of a batch without padding when the attention kernel keeps them apart "
        "(flash / flex attention); with SDPA it stays off.",
    )
    auto_checkpointing: bool = Field(
        True,
        description="Choose activation checkpointing (off, every n-th layer, every layer) from the memory estimate; "
        "false: use `train.gradient_checkpointing` as written.",
    )
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "paged_adamw_8bit"] = Field(
        "auto",
        description="`auto`: fused CUDA AdamW on GPU; `adamw_torch` turns fusion off; `paged_adamw_*` (bitsandbytes) "
        "spill optimizer state to CPU under memory pressure, `_8bit` also quantizes it.",
    )
    bf16: bool = Field(True, description="bf16 mixed precision on GPUs that support it.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile (slow first steps; opt in).")
    memory_fraction: float = Field(
        0.85, gt=0.1, le=1.0, description="Share of GPU memory the checkpointing decision may plan to use."
    )
    memory_budget_gib: float | None = Field(
        None, gt=0, description="Plan for at most this much GPU memory instead (e.g. to fit a smaller card later)."
    )


class TrainConfig(_Section):
    method: Literal["sft", "dpo", "cpt"] = Field(
        "sft",
        description="Training objective: `sft` (supervised fine-tuning on chats, loss on assistant turns), `dpo` "
        "(preference pairs prompt/chosen/rejected), `cpt` (continued pre-training on raw `text`, loss on every token).",
    )
    adapter: Literal["lora", "qlora", "dora", "rslora", "full"] = Field(
        "lora",
        description="What is trained: `lora` adapters on a frozen base; `qlora` LoRA on a 4-bit NF4 base (CUDA GPU + "
        "bitsandbytes); `dora` weight-decomposed LoRA; `rslora` rank-stabilised LoRA (scale alpha/sqrt(r)); `full` every weight.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA hyperparameters (lora, qlora, dora, rslora).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="DPO settings (method: dpo).")
    mix: MixConfig | None = Field(None, description="Mix general data into the training set (methods sft and cpt).")
    packing: bool = Field(
        False,
        description="SFT: pack several examples into each `data.max_length` row without padding (attention stays within "
        "each example; assistant-only loss kept). `cpt` always packs; `dpo` never does.",
    )
    epochs: float = Field(
        3.0, gt=0, description="Passes over the training set. 1-3 is usual; more than 5 on under 1k examples tends to memorise them."
    )
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use `epochs`).")
    learning_rate: float = Field(
        2e-4,
        gt=0,
        description="Peak learning rate. LoRA/QLoRA/DoRA: 1e-4 to 2e-4 (above 5e-4 tends to diverge). Full fine-tuning: "
        "1e-5 to 2e-5 (above 5e-5 risks forgetting). DPO: about ten times lower than SFT.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up the learning rate (0.03-0.1 is usual).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per step; the largest that fits in memory (see `tunekit estimate`).")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step. batch_size x this is the effective batch; 16-64 is a common target.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    logging_steps: int = Field(5, gt=0, description="Log loss, learning rate and tokens/s every N steps.")
    eval_steps: int | None = Field(None, gt=0, description="Validate every N steps (default: once per epoch).")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward instead of storing them: several-fold less activation memory for "
        "about 30% more compute. Turn on when `tunekit estimate` says activations do not fit.",
    )
    fast: FastConfig = Field(default_factory=FastConfig, description="CUDA speed switches (Liger, checkpointing plan, fused AdamW...).")
    seed: int = Field(42, description="Seed for weight init of adapters and data order.")
    save_steps: int | None = Field(
        None,
        gt=0,
        description="Save a resumable checkpoint every N optimizer steps (default: at every validation, or every 50 "
        "steps without validation data). Ctrl-C also saves one.",
    )
    save_total_limit: int = Field(
        2, gt=0, description="Keep the newest N checkpoints; the best one by validation loss is kept in addition."
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after N validations in a row without a lower validation loss; the adapter is then the best "
        "checkpoint's. Needs validation data.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Also send metrics to these trackers (extras: tunekit[tracking] for tensorboard, tunekit[mlflow], "
        "tunekit[wandb]). metrics.jsonl and loss.png are always written.",
    )

    @model_validator(mode="after")
    def _checkpoints_fall_on_validations(self) -> "TrainConfig":
        # Early stopping ends on the best checkpoint, so every validation must have a checkpoint.
        if self.early_stopping_patience is None or self.save_steps is None:
            return self
        if self.eval_steps is None:
            raise ValueError("save_steps: with early_stopping_patience, also set eval_steps (save_steps a multiple of it), or leave save_steps unset")
        if self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps: with early_stopping_patience it must be a multiple of eval_steps ({self.eval_steps})")
        return self

    @model_validator(mode="after")
    def _method_options_fit(self) -> "TrainConfig":
        if self.packing and self.method == "dpo":
            raise ValueError("packing: true applies to method sft (cpt always packs; dpo pairs are never packed)")
        if self.mix is not None and self.method == "dpo":
            raise ValueError("mix: mixing in general data applies to methods sft and cpt, not dpo")
        if self.dpo.init_from is not None and self.method != "dpo":
            raise ValueError(f"dpo.init_from: applies to method dpo (method is {self.method})")
        return self


Metric = Literal[
    "exact_match", "normalized_match", "json_valid", "json_schema", "field_accuracy", "classification", "rules", "rouge_l", "perplexity"
]


class EvalRule(_Section):
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
            import re

            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"rule '{self.name}': invalid regex: {exc}") from None
        return self


class EndpointConfig(_Section):
    base_url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent with each request.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (none: a placeholder key).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one response.")


class ForgettingConfig(_Section):
    enabled: bool = Field(False, description="Score base and tuned on general-capability suites to measure forgetting.")
    suites: list[str] = Field(
        default_factory=lambda: ["general"], description="Built-in suite names (`general`) or paths of JSONL suite files."
    )
    max_items: int | None = Field(200, gt=0, description="Items used at most (spread over categories); none: every item.")
    batch_size: int = Field(32, gt=0, description="Suite items generated per batch.")
    warn_drop: float = Field(0.02, ge=0.0, le=1.0, description="A drop (base share right - tuned) from here on is a warning.")
    fail_drop: float = Field(0.05, ge=0.0, le=1.0, description="A drop above this is a failure.")


class JudgeConfig(_Section):
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
    max_tokens: int = Field(64, gt=0, description="Tokens the judge may write per verdict.")
    retries: int = Field(2, ge=0, description="Retries of a failed or unparseable judge call.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one judge response.")


class ContaminationConfig(_Section):
    enabled: bool = Field(True, description="Flag test examples that also appear (exactly or nearly) in the training data.")
    near_threshold: float = Field(0.8, gt=0.0, le=1.0, description="MinHash Jaccard estimate from which an example is a near copy.")
    exclude: bool = Field(True, description="Leave flagged examples out of every score (they stay in predictions.jsonl).")


class EvalConfig(_Section):
    metrics: list[Metric] = Field(
        default_factory=lambda: ["exact_match", "json_valid", "field_accuracy"], description="Metrics computed on the test set."
    )
    compare_base: bool = Field(True, description="Also evaluate the untuned base model, side by side.")
    max_new_tokens: int = Field(128, gt=0, description="Generation budget per test example.")
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
    json_schema: Path | None = Field(None, description="JSON schema file for the `json_schema` metric.")
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
            problems.append("target: endpoint needs eval.endpoint (base_url, model)")
        if self.judge.enabled and not (self.judge.base_url and self.judge.model):
            problems.append("judge.enabled needs judge.base_url and judge.model")
        if self.forgetting.warn_drop > self.forgetting.fail_drop:
            problems.append("forgetting.warn_drop must not exceed forgetting.fail_drop")
        if self.label_regex is not None:
            import re

            try:
                re.compile(self.label_regex)
            except re.error as exc:
                problems.append(f"label_regex: invalid regex: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("gates")
    @classmethod
    def _known_gate_metrics(cls, gates: list[str], info) -> list[str]:
        needed = ("metrics", "rules", "target", "compare_base", "contamination", "forgetting", "judge")
        if not gates or any(name not in info.data for name in needed):
            return gates  # another field is invalid: reported on its own, names cannot be known yet
        from types import SimpleNamespace

        from tunekit.eval.gates import gate_problems  # lazy: tunekit.eval imports this module

        problems = gate_problems(SimpleNamespace(gates=gates, **{name: info.data[name] for name in needed}))
        if problems:
            raise ValueError("; ".join(problems))
        return gates


ExportFormat = Literal["merged", "gguf", "ollama"]
# File types llama.cpp can write (its `llama-quantize` names). F32/F16/BF16/Q8_0 come straight from the
# converter; every other type is quantized from the F16 file through llama-cpp-python.
GGUF_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
    "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)


def _canonical_gguf_type(name: str) -> str:
    wanted = str(name).strip().upper()
    if wanted not in GGUF_TYPES:
        close = difflib.get_close_matches(wanted, GGUF_TYPES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(GGUF_TYPES)})"
        raise ValueError(f"unknown GGUF type '{name}'{hint}")
    return wanted


class GgufExportConfig(_Section):
    types: list[str] = Field(
        default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"],
        description="GGUF files to write (any case): F16/BF16/Q8_0/F32 are converted from the merged model, "
        "other llama.cpp types (Q4_K_M, Q5_K_M, Q6_K, ...) are quantized from the F16 file, which is always written.",
    )
    check_parity: bool = Field(True, description="Run the test prompts greedily through the merged HF model and the F16 GGUF and compare.")
    parity_prompts: int = Field(50, gt=0, description="Test (else validation) prompts used by the GGUF parity check.")
    min_parity: float = Field(
        0.9, ge=0.0, le=1.0, description="Fail the export when a smaller share of greedy outputs is identical (a template or stop-token mismatch always fails)."
    )
    perplexity_text: Path | None = Field(
        None, description="Plain-text file for the quantization perplexity gate (default: the test split rendered with the chat template)."
    )
    perplexity_max_tokens: int = Field(8192, gt=1, description="Score at most this many tokens of the perplexity text.")
    perplexity_context: int = Field(512, gt=1, description="Window (tokens) in which the perplexity text is scored.")
    max_ppl_increase: dict[str, float] = Field(
        default_factory=dict,
        description="Gate per quantized type, in % perplexity increase over F16 (e.g. {Q4_K_M: 15}); a type over its gate is "
        "blocked: its file is removed and no Modelfile points at it. Types not listed use `default_max_ppl_increase`.",
    )
    default_max_ppl_increase: float | None = Field(
        30.0, ge=0.0, description="Gate for types not in `max_ppl_increase` (30: block 'degraded' files; null: no gate)."
    )

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_canonical_gguf_type(t) for t in value))

    @field_validator("max_ppl_increase")
    @classmethod
    def _known_gated_types(cls, value: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in value.values()):
            raise ValueError("a perplexity-increase gate must be >= 0 (%)")
        return {_canonical_gguf_type(k): v for k, v in value.items()}


OLLAMA_PARAMETERS = (
    "temperature", "top_p", "top_k", "min_p", "num_ctx", "num_predict", "repeat_penalty", "repeat_last_n", "seed", "stop",
)


class OllamaExportConfig(_Section):
    model_name: str | None = Field(None, description="Name given to `ollama create` (default: the run name).")
    gguf: str | None = Field(
        None, description="GGUF type the Modelfile's FROM uses (default: the smallest file that passed the quantization gate)."
    )
    system: str | None = Field(None, description="SYSTEM line (default: data.system_prompt, else the chat template's own default).")
    parameters: dict[str, float | int | str | list[str]] = Field(
        default_factory=dict, description=f"Extra PARAMETER lines, e.g. {{temperature: 0}}. Keys: {', '.join(OLLAMA_PARAMETERS)}."
    )

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(OLLAMA_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown Ollama parameter(s) {', '.join(unknown)} (known: {', '.join(OLLAMA_PARAMETERS)})")
        return value

    @field_validator("gguf")
    @classmethod
    def _known_gguf(cls, value: str | None) -> str | None:
        return None if value is None else _canonical_gguf_type(value)


class ExportConfig(_Section):
    adapter: bool = Field(True, description="Write the PEFT adapter directory.")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["merged"],
        description="What to build: `merged` (safetensors model), `gguf` (llama.cpp files, extra tunekit[gguf]), "
        "`ollama` (Modelfile; implies gguf). Every format starts from the merged model. []: adapter copy only.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype of the merged model.")
    check_parity: bool = Field(True, description="Check that the merged model generates what base + adapter generates.")
    gguf: GgufExportConfig = Field(default_factory=GgufExportConfig, description="GGUF types, parity check and quantization gate.")
    ollama: OllamaExportConfig = Field(default_factory=OllamaExportConfig, description="The Ollama Modelfile.")

    @model_validator(mode="after")
    def _ollama_file_is_exported(self) -> "ExportConfig":
        wanted = self.ollama.gguf
        if wanted is not None and wanted not in {"F16", *self.gguf.types}:
            raise ValueError(f"ollama.gguf: {wanted} is not among export.gguf.types ({', '.join(self.gguf.types)})")
        return self

    @property
    def writes_gguf(self) -> bool:
        return "gguf" in self.formats or "ollama" in self.formats

    @property
    def writes_merged(self) -> bool:
        return bool(self.formats)


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, gt=0, lt=65536, description="TCP port.")
    max_new_tokens: int = Field(256, gt=0, description="Default and upper bound for `max_tokens` in requests.")


class Recipe(_Section):
    name: str | None = Field(None, description="Run name; the run directory is `<output_dir>/<name>`. Default: recipe file name.")
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: `smollm2-135m-instruct` (embedded, offline), a Hugging Face hub id, or a local model directory.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub to run. Off unless you trust the source.")
    allow_pickle: bool = Field(False, description="Allow loading pickled (.bin/.pt) weights. Off: safetensors only.")
    output_dir: Path = Field(Path("runs"), description="Where run directories are created.")
    data: DataConfig = Field(description="Training data and how it is prepared.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training method and hyperparameters.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation on the held-out test set.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="What `tunekit export` writes.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Defaults of `tunekit serve`.")

    # Set by load_recipe, not by users: the file this recipe came from.
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return self._source.stem if self._source else "run"

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name

    def to_yaml(self) -> str:
        """The resolved recipe, every default filled in, the run name fixed, paths absolute."""
        data = self.model_dump(mode="json", by_alias=True)
        data["name"] = self.run_name
        return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------- loading and error reporting


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (the parent of an unknown key), for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    return list(current.model_fields)


def _format_problem(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    key = ".".join(str(p) for p in loc) or "(recipe)"
    if err["type"] == "extra_forbidden":
        parent, unknown = loc[:-1], str(loc[-1])
        known = _known_keys(Recipe, parent)
        close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
        msg = f"{key}: unknown key"
        if close:
            msg += f" (did you mean '{'.'.join([*map(str, parent), close[0]])}'?)"
        elif known:
            msg += f" (valid keys here: {', '.join(known)})"
        return msg
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] in {"literal_error", "enum"} or not isinstance(value, (dict, list)):
        return f"{key}: {message} (got {value!r})"
    return f"{key}: {message}"


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError("--set", [f"{dotted}: '{part}' is not a section"])
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to raw recipe data."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}' must look like key.path=value")
            continue
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw else None)
    if problems:
        raise RecipeError("--set", problems)
    return data


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    base = base.resolve()

    def anchor(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p)

    recipe.output_dir = anchor(recipe.output_dir) or recipe.output_dir
    for name in ("train", "eval", "test"):
        value = getattr(recipe.data, name)
        if value is not None:
            setattr(recipe.data, name, anchor(value) or value)
    recipe.data.external_eval = [anchor(p) or p for p in recipe.data.external_eval]
    recipe.export.gguf.perplexity_text = anchor(recipe.export.gguf.perplexity_text) or recipe.export.gguf.perplexity_text
    for rule in recipe.data.analysis.rules:
        if rule.json_schema is not None:
            rule.json_schema = anchor(rule.json_schema) or rule.json_schema
    # eval section: schema file and user suite files travel with the recipe too.
    recipe.eval.json_schema = anchor(recipe.eval.json_schema) or recipe.eval.json_schema
    recipe.eval.forgetting.suites = [
        name if "/" not in name and not name.endswith(".jsonl") else str(anchor(Path(name)) or name)
        for name in recipe.eval.forgetting.suites
    ]
    if recipe.train.mix is not None:
        recipe.train.mix.file = anchor(recipe.train.mix.file) or recipe.train.mix.file
    if recipe.train.dpo.init_from is not None:
        recipe.train.dpo.init_from = anchor(recipe.train.dpo.init_from) or recipe.train.dpo.init_from
    return recipe


def parse_recipe(data: Any, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate raw recipe data, reporting every problem at once with its key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"the recipe must be a YAML mapping of keys, got {type(data).__name__}"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [_format_problem(e) for e in exc.errors()]) from None
    recipe._source = Path(source) if source != "<recipe>" else None
    return _resolve_paths(recipe, base_dir or Path.cwd())


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Load and validate a recipe file (or the `recipe.yaml` inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(str(path), ["file not found; pass the path of a recipe YAML file or of a run directory"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides)
    recipe = parse_recipe(data, str(path), base_dir=path.parent)
    if check_files:
        missing = [
            f"data.{name}: file not found: {getattr(recipe.data, name)}"
            for name in ("train", "eval", "test")
            if getattr(recipe.data, name) is not None and not getattr(recipe.data, name).exists()
        ]
        if missing:
            raise RecipeError(str(path), missing)
    return recipe
