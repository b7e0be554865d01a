"""The recipe: one YAML file that drives every stage.

Defaults live here, once, each with a help string. Relative paths in a recipe are resolved
against the directory of the recipe file, so a recipe and its data travel together.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

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


class DataConfig(_Section):
    train: Path = Field(
        description="Training data: a JSONL, JSON-array, CSV or Parquet file, or a saved Hugging Face dataset directory."
    )
    eval: Path | None = Field(None, description="Optional validation file; when absent, `val_fraction` of train is held out.")
    test: Path | None = Field(None, description="Optional held-out test file for `tunekit eval`; when absent, `test_fraction` of train is held out.")
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
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: `all-linear` or a list of module names (e.g. [q_proj, v_proj])."
    )


class TrainConfig(_Section):
    method: Literal["sft"] = Field("sft", description="Training objective. `sft` (supervised fine-tuning on chats).")
    adapter: Literal["lora"] = Field("lora", description="What is trained: `lora` adapters on a frozen base.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA hyperparameters.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training set.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use `epochs`).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    logging_steps: int = Field(5, gt=0, description="Log loss, learning rate and tokens/s every N steps.")
    eval_steps: int | None = Field(None, gt=0, description="Validate every N steps (default: once per epoch).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory by recomputing activations.")
    seed: int = Field(42, description="Seed for weight init of adapters and data order.")


Metric = Literal["exact_match", "json_valid", "field_accuracy"]


class EvalConfig(_Section):
    metrics: list[Metric] = Field(
        default_factory=lambda: ["exact_match", "json_valid", "field_accuracy"], description="Metrics computed on the test set."
    )
    compare_base: bool = Field(True, description="Also evaluate the untuned base model, side by side.")
    max_new_tokens: int = Field(128, gt=0, description="Generation budget per test example (greedy decoding).")
    batch_size: int = Field(16, gt=0, description="Test examples generated per batch.")
    max_examples: int | None = Field(None, gt=0, description="Evaluate only the first N test examples.")


class ExportConfig(_Section):
    adapter: bool = Field(True, description="Write the PEFT adapter directory.")
    merged: bool = Field(True, description="Write a merged safetensors model with tokenizer and chat template.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype of the merged model.")
    check_parity: bool = Field(True, description="Check that the merged model generates what base + adapter generates.")


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
    for rule in recipe.data.analysis.rules:
        if rule.json_schema is not None:
            rule.json_schema = anchor(rule.json_schema) or rule.json_schema
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
