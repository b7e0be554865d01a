"""The `data` section: inputs (local files or hub datasets), validation, cleaning, analysis, split, data gates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, PlainValidator, model_validator

from tunekit.config.common import RELATIVE_TO_RECIPE, RecipePath, Section


PiiType = Literal["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"]
ALL_PII_TYPES: list = ["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"]


class CleanConfig(Section):
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


class ConsistencyRule(Section):
    name: str = Field(description="Name shown in the report.")
    regex: str | None = Field(None, description="Every assistant reply must match this regex (re.search).")
    ends_with: str | None = Field(None, description="Every assistant reply must end with this text.")
    # Written `json:` in recipes; named otherwise here because `json` shadows a BaseModel method.
    parses_as_json: bool = Field(False, alias="json", description="Every assistant reply must parse as JSON.")
    json_schema: RecipePath | None = Field(None, description="Every assistant reply must validate against this JSON schema file.")

    @model_validator(mode="after")
    def _one_check(self) -> "ConsistencyRule":
        given = [k for k in ("regex", "ends_with", "json_schema") if getattr(self, k) is not None]
        given += ["json"] if self.parses_as_json else []
        if len(given) != 1:
            raise ValueError("a rule needs exactly one of regex, ends_with, json: true, json_schema")
        return self


class AnalysisConfig(Section):
    label_field: str | None = Field(None, description="Label of a row: this key of the JSON assistant reply (e.g. category).")
    label_regex: str | None = Field(None, description="Label of a row: group 1 (or the match) of this regex on the assistant reply.")
    max_label_share: float = Field(0.5, gt=0.0, le=1.0, description="Warn when the largest label holds more than this share.")
    rules: list[ConsistencyRule] = Field(default_factory=list, description="Checks every assistant reply must pass.")
    diversity: bool = Field(False, description="Cluster embedded user turns and judge diversity (extra: tunekit[semantic]).")
    diversity_clusters: int | None = Field(None, gt=1, description="KMeans clusters (default: about sqrt(rows/2), 2..50).")


class DataGates(Section):
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


DataSource = Annotated[Path | HubDataset, PlainValidator(_data_source), PlainSerializer(str), RELATIVE_TO_RECIPE]
_HUB_HELP = " A hub dataset is `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]` (loaded with `datasets`; needs the hub or its cache)."


class DataConfig(Section):
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
    strict: bool = Field(
        False,
        description="Fail the data stage when any row is removed for any reason, duplicates and policy drops included "
        "(`tunekit data prepare --strict` sets it).",
    )
    system_prompt: str | None = Field(None, description="System prompt added to examples that have none (also used at eval).")
    split: Literal["random", "stratified", "grouped"] = Field(
        "random", description="How held-out rows are chosen: at random, stratified by label, or by `group_key` groups."
    )
    group_key: str | None = Field(None, description="Top-level field of the input rows that groups them (for split: grouped).")
    external_eval: list[RecipePath] = Field(
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
