"""Estimate a training run before spending on it: parameters, GPU memory, tokens and time.

Parameter counts are exact. The model is built from its config on PyTorch's `meta` device (no
weights, no memory), the recipe's real PEFT `LoraConfig` is applied to it, and the parameters
are counted, so `target_modules` (including `all-linear`), DoRA's magnitude vectors and tied
embeddings are counted exactly as training will see them.

The memory model (weights, optimizer state, activations, LM head) is tunekit.train.memory's.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunekit.config import Recipe
from tunekit.errors import ModelError, RecipeError, TunekitError
from tunekit.runs import RunPaths
from tunekit.train.memory import Memory, ModelShapes, memory_by_mode, memory_mode, unfused_logits_bytes

@dataclass
class Estimate:
    model: str  # where the architecture came from
    architecture: str
    method: str
    adapter: str
    total_params: int
    trainable_params: dict[str, int]  # per mode: full, lora, qlora
    recipe_trainable_params: int
    batch_size: int
    max_length: int
    gradient_checkpointing: bool
    memory: dict[str, Memory]
    logits_unfused: int  # bytes the b·s×V fp32 logits and their gradient would take without TRL's chunking
    train_examples: int | None
    tokens_per_epoch: int | None
    tokens_source: str
    epochs: float
    total_steps: int | None
    total_tokens: int | None
    tokens_per_s: float | None
    tokens_per_s_source: str | None
    seconds: float | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def recipe_mode(self) -> str:
        """The memory column that matches the recipe (DoRA and rsLoRA are LoRA variants)."""
        return memory_mode(self.adapter)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["memory"] = {mode: mem.to_dict() for mode, mem in self.memory.items()}
        data["recipe_mode"] = self.recipe_mode
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------- architecture


def model_config(recipe: Recipe, shape: str | None = None):
    """(transformers config, description) for the estimate, without loading any weights."""
    from tunekit.models.shapes import SHAPES, named_config

    if shape is not None:
        return named_config(shape), f"shape {shape.lower()}"
    base = recipe.base_model
    if base.lower() in SHAPES:
        return named_config(base), f"shape {base.lower()}"
    from transformers import AutoConfig

    from tunekit.models.loading import _embedded_gguf, check_model_reference, tunekit_home

    kind = check_model_reference(base, allow_pickle=True)  # weights are never read here
    if kind in ("embedded", "gguf"):
        cached = tunekit_home() / "models" / base
        if kind == "embedded" and (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached), base
        gguf = _embedded_gguf(base) if kind == "embedded" else Path(base).expanduser()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name), base
    try:
        return AutoConfig.from_pretrained(base, trust_remote_code=recipe.trust_remote_code), base
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the config of base_model '{base}': {str(exc).splitlines()[0]}",
            hint=f"estimate offline with --shape NAME (known shapes: {', '.join(sorted(SHAPES))}), "
            "or point base_model at a local model directory",
        ) from None


def _meta_model(config, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"transformers cannot build a causal LM from this config: {exc}") from None


def _linear_in_features(peft_model) -> list[tuple[int, int]]:
    """(in_features, r) of every adapted layer."""
    out = []
    for module in peft_model.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and "default" in lora_a:
            out.append((lora_a["default"].in_features, lora_a["default"].out_features))
    return out


def _as_adapter(recipe: Recipe) -> Recipe:
    """The recipe itself, or for full fine-tuning a copy with `lora`, to fill the LoRA columns."""
    if recipe.train.adapter != "full":
        return recipe
    copy = recipe.model_copy(deep=True)
    copy.train.adapter = "lora"
    return copy


def count_shapes(config, recipe: Recipe) -> ModelShapes:
    """Exact parameter counts from a meta-device model with the recipe's adapter applied."""
    import torch
    from peft import get_peft_model

    from tunekit.train.modeling import peft_config

    model = _meta_model(config, recipe.trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    quantizable = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head
    )
    try:
        with torch.device("meta"):
            peft_model = get_peft_model(model, peft_config(_as_adapter(recipe)))
    except ValueError as exc:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise RecipeError(
            str(recipe.source or "<recipe>"),
            [f"train.lora.target_modules: {str(exc).splitlines()[0]} (linear layers of this model: {', '.join(linear)})"],
        ) from None
    adapter, _ = peft_model.get_nb_trainable_parameters()
    dropout_copy = recipe.train.lora.dropout > 0
    lora_elems = sum(in_f * dropout_copy + r for in_f, r in _linear_in_features(peft_model))
    return ModelShapes(total=total, adapter=adapter, quantizable=quantizable, lora_activation_elems=lora_elems)


# ---------------------------------------------------------------- tokens and time


def _from_report(run: RunPaths) -> tuple[int, int] | None:
    if not run.data_report.is_file():
        return None
    train = json.loads(run.data_report.read_text(encoding="utf-8"))["splits"]["train"]
    rows, mean = train["rows"], train["tokens"]["mean"] or 0
    return rows, round(rows * mean)


def _tokenizer_for_counting(recipe: Recipe):
    """The recipe's tokenizer without converting or downloading weights; None when not at hand."""
    from transformers import AutoTokenizer

    from tunekit.models.loading import _embedded_gguf, check_model_reference, load_tokenizer, tunekit_home

    base = recipe.base_model
    kind = check_model_reference(base, allow_pickle=True)
    if kind == "local" or kind == "hub":
        return load_tokenizer(base, trust_remote_code=recipe.trust_remote_code, chat_template=recipe.chat_template)
    cached = tunekit_home() / "models" / base
    if kind == "embedded" and (cached / "tokenizer_config.json").is_file():
        return load_tokenizer(str(cached), chat_template=recipe.chat_template)
    gguf = _embedded_gguf(base) if kind == "embedded" else Path(base).expanduser()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if recipe.chat_template is not None:  # lengths are counted under the template training will use
        from tunekit.models.templates import apply_template, choose_template

        apply_template(tokenizer, choose_template(recipe.chat_template))
    return tokenizer


def _from_train_file(recipe: Recipe) -> tuple[int, int]:
    """Tokenize the raw train file; scale by the share prepare would keep for training."""
    from tunekit.data.clean import measure_tokens
    from tunekit.data.validate import read_input

    tokenizer = _tokenizer_for_counting(recipe)
    data = recipe.data
    examples = read_input("train", data.train, data.train.name, data.format).examples
    measure_tokens(examples, tokenizer)
    limit = data.max_length
    kept = [e for e in examples if e.n_tokens > 0 and (e.n_tokens <= limit or data.over_length == "truncate")]
    lengths = [min(e.n_tokens, limit) for e in kept]
    held_out = (data.val_fraction if data.eval is None else 0.0) + (data.test_fraction if data.test is None else 0.0)
    keep = 1.0 - held_out
    return round(len(lengths) * keep), round(sum(lengths) * keep)


def count_tokens(recipe: Recipe) -> tuple[int | None, int | None, str, list[str]]:
    """(train examples, tokens per epoch, where they came from, notes)."""
    run = RunPaths(recipe.run_dir)
    found = _from_report(run)
    if found is not None:
        return *found, f"prepared data ({run.data_report})", []
    from tunekit.models.shapes import SHAPES

    if recipe.base_model.lower() in SHAPES:
        return None, None, "unknown", ["tokens unknown: a named shape has no tokenizer; run `tunekit data prepare` first"]
    if not isinstance(recipe.data.train, Path):  # a hub dataset: not downloaded just for an estimate
        return None, None, "unknown", ["tokens unknown: data.train is a hub dataset; run `tunekit data prepare` first"]
    try:
        rows, tokens = _from_train_file(recipe)
    except (TunekitError, OSError) as exc:
        return None, None, "unknown", [f"tokens unknown: {str(exc).splitlines()[0]}"]
    note = "counted on the raw train file before deduplication and cleaning; `tunekit data prepare` gives exact figures"
    return rows, tokens, "tokenized train file", [note]


def measured_tokens_per_s(run: RunPaths) -> float | None:
    """Median training speed logged in an earlier run's metrics.jsonl (None when there is none)."""
    if not run.metrics.is_file():
        return None
    speeds = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line).get("tokens_per_s")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, (int, float)) and value > 0:
            speeds.append(float(value))
    return statistics.median(speeds) if speeds else None


def _schedule(recipe: Recipe, rows: int | None, tokens: int | None) -> tuple[int | None, int | None]:
    """(optimizer steps, tokens processed) over the whole run."""
    train = recipe.train
    if rows is None or tokens is None or rows == 0:
        return None, None
    per_step = train.batch_size * train.gradient_accumulation_steps
    factor = 2 if train.method == "dpo" else 1  # chosen and rejected both go through the model
    if train.max_steps > 0:
        return train.max_steps, round(train.max_steps * per_step * tokens / rows * factor)
    steps = math.ceil(math.ceil(rows / per_step) * train.epochs)
    return steps, round(tokens * train.epochs * factor)


# ---------------------------------------------------------------- the estimate


def estimate(recipe: Recipe, *, shape: str | None = None, tokens_per_s: float | None = None) -> Estimate:
    """Parameters, memory for full / LoRA / QLoRA, tokens per epoch and time for `recipe`.

    `shape` names a known architecture (tunekit.models.shapes) to estimate instead of
    base_model; `tokens_per_s` gives the training speed, else the run's metrics.jsonl is used.
    """
    from tunekit.train.advice import risky_settings

    config, described = model_config(recipe, shape)
    shapes = count_shapes(config, recipe)
    memory = memory_by_mode(config, shapes, recipe)
    rows, tokens, source, notes = count_tokens(recipe)
    if shape is not None and tokens is not None and shape.lower() != recipe.base_model.lower():
        notes.append(f"tokens are counted with the tokenizer of base_model {recipe.base_model}, not of {shape}")
    steps, total_tokens = _schedule(recipe, rows, tokens)

    speed_source = "given" if tokens_per_s else None
    if tokens_per_s is None:
        same_model = shape is None or shape.lower() == recipe.base_model.lower()
        measured = measured_tokens_per_s(RunPaths(recipe.run_dir)) if same_model else None
        if measured is not None:
            tokens_per_s, speed_source = measured, f"measured ({RunPaths(recipe.run_dir).metrics})"
    seconds = total_tokens / tokens_per_s if tokens_per_s and total_tokens else None
    if seconds is None and total_tokens:
        notes.append("time unknown: pass --tokens-per-s, or train once and estimate again (metrics.jsonl logs tokens/s)")

    adapter = recipe.train.adapter
    return Estimate(
        model=described,
        architecture=type(config).__name__.removesuffix("Config"),
        method=recipe.train.method,
        adapter=adapter,
        total_params=shapes.total,
        trainable_params={"full": shapes.total, "lora": shapes.adapter, "qlora": shapes.adapter},
        recipe_trainable_params=shapes.total if adapter == "full" else shapes.adapter,
        batch_size=recipe.train.batch_size,
        max_length=recipe.data.max_length,
        gradient_checkpointing=recipe.train.gradient_checkpointing,
        memory=memory,
        logits_unfused=unfused_logits_bytes(config, recipe),
        train_examples=rows,
        tokens_per_epoch=tokens,
        tokens_source=source,
        epochs=recipe.train.epochs,
        total_steps=steps,
        total_tokens=total_tokens,
        tokens_per_s=tokens_per_s,
        tokens_per_s_source=speed_source,
        seconds=seconds,
        warnings=risky_settings(recipe, rows),
        notes=notes,
    )
