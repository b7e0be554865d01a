"""Fold a LoRA adapter into its base model and write a stand-alone safetensors model directory.

The merged directory must load with nothing but `transformers` (no peft, no tunekit): plain
`AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`, chat template included,
and `generate` must stop at the end of the assistant's turn.

LoRA and DoRA adapters merge the same way (peft folds DoRA's magnitude vector in `merge_and_unload`).
QLoRA adapters are LoRA adapters trained on a 4-bit view of the base: the base is loaded here
unquantized, in the export dtype, and the adapter merged into those full-precision weights, so the
merged model never carries 4-bit rounding. A full fine-tune (`model/` in the run directory) is
already the merged model: `save_full_model` re-saves it the same way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import ModelError, RunDirError, TunekitError
from tunekit.models.loading import end_of_turn_ids
from tunekit.models.trained import ADAPTER_CONFIG, ADAPTER_WEIGHTS, attach_adapter, check_adapter_dir, tokenizer_source

# Weight-name fragments that only exist while an adapter is attached: none may reach the merged files.
ADAPTER_WEIGHT_MARKERS = ("lora_", "base_layer", "modules_to_save", "original_module", "lora_magnitude")


def dir_listing(path: Path) -> dict:
    """Every file of a directory (relative name and size), for reports and the CLI summary."""
    files = [{"name": str(p.relative_to(path)), "bytes": p.stat().st_size} for p in sorted(path.rglob("*")) if p.is_file()]
    return {"path": str(path), "files": files, "bytes": sum(f["bytes"] for f in files)}


@contextmanager
def _atomic_dir(target: Path):
    """Build a directory next to `target` and swap it in only when complete, so an interrupted
    export never leaves a half-written model that looks finished."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_adapter(adapter_dir: Path, target: Path) -> dict:
    """Copy the PEFT adapter directory (adapter weights, config, tokenizer) to `target`."""
    check_adapter_dir(adapter_dir)
    with _atomic_dir(target) as tmp:
        shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
    return dir_listing(target)


def _base_layer(module):
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _set_tied(model, tied: bool) -> None:
    model.config.tie_word_embeddings = tied
    text_config = model.config.get_text_config()
    if text_config is not model.config and hasattr(text_config, "tie_word_embeddings"):
        text_config.tie_word_embeddings = tied


def _untie_adapted_embeddings(peft_model) -> bool:
    """Give the output embedding its own weight when the adapter changes one of a tied pair.

    With tied embeddings `lm_head.weight` *is* `embed_tokens.weight`. Merging a LoRA on lm_head adds
    its delta in place, so the input embedding would silently change too and the merged model would
    no longer compute what base + adapter computes (peft only warns). Cloning first keeps both exact;
    the merged model is then saved untied.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = peft_model.get_base_model()
    inputs, outputs = base.get_input_embeddings(), base.get_output_embeddings()
    if inputs is None or outputs is None:
        return False
    in_layer, out_layer = _base_layer(inputs), _base_layer(outputs)
    in_weight, out_weight = getattr(in_layer, "weight", None), getattr(out_layer, "weight", None)
    if in_weight is None or out_weight is None or in_weight.data_ptr() != out_weight.data_ptr():
        return False
    if not (isinstance(inputs, BaseTunerLayer) or isinstance(outputs, BaseTunerLayer)):
        return False
    out_layer.weight = torch.nn.Parameter(out_weight.detach().clone(), requires_grad=False)
    _set_tied(base, False)
    return True


def _embeddings_shared(model) -> bool:
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    return inputs is not None and outputs is not None and inputs.weight.data_ptr() == outputs.weight.data_ptr()


def _strip_quantization(model) -> None:
    """The merged weights are plain tensors; a leftover quantization mark would make loaders look for
    a quantizer (or refuse to save)."""
    model.hf_quantizer = None
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def merge_adapter(
    base_path: str,
    adapter_dir: Path,
    out_dir: Path,
    *,
    dtype: str = "float32",
    readme: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Load base + adapter, merge, and write `out_dir` (safetensors, tokenizer, chat template,
    generation config, optional README). Returns a summary: files, sizes, dtype, tying."""
    from tunekit.models import load_model, load_tokenizer

    check_adapter_dir(adapter_dir, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(tokenizer_source(adapter_dir, base_path), trust_remote_code=trust_remote_code)
    model = load_model(base_path, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if getattr(model, "hf_quantizer", None) is not None:
        # Merging into quantized weights would bake quantization error into the "merged" model.
        raise ModelError(
            f"base model '{base_path}' loads quantized; a merged export needs full-precision base weights",
            hint="use the unquantized version of the base model",
        )
    peft_model = attach_adapter(model, adapter_dir, base_path, allow_pickle=allow_pickle)
    untied = _untie_adapted_embeddings(peft_model)
    merged = peft_model.merge_and_unload()
    if merged.config.tie_word_embeddings and not _embeddings_shared(merged):
        _set_tied(merged, False)  # e.g. lm_head in modules_to_save: the trained copy is its own tensor
    _strip_quantization(merged)
    summary = _save_stand_alone(merged, tokenizer, out_dir, readme)
    summary.update(dtype=dtype, untied_embeddings=untied)
    return summary


def _save_stand_alone(model, tokenizer, out_dir: Path, readme: str | None) -> dict:
    """Save weights, tokenizer and a generation config that stops at the end of the assistant's turn."""
    generation = model.generation_config
    eos_ids = end_of_turn_ids(tokenizer, generation)
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    with _atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if readme is not None:
            (tmp / "README.md").write_text(readme, encoding="utf-8")
        verify_merged_dir(tmp)
    summary = dir_listing(out_dir)
    summary.update(
        parameters=sum(p.numel() for p in model.parameters()),
        tie_word_embeddings=bool(model.config.tie_word_embeddings),
        eos_token_id=eos_ids,
    )
    return summary


def check_full_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file() or not any(model_dir.glob("*.safetensors")):
        raise RunDirError(
            f"{model_dir} is not a saved model directory (config.json and .safetensors weights expected)",
            hint="run `tunekit train` again to write the model",
        )


def save_full_model(model_dir: Path, out_dir: Path, *, dtype: str = "float32", readme: str | None = None, trust_remote_code: bool = False) -> dict:
    """A full fine-tune is already the merged model: re-save it in `dtype` with its tokenizer and a
    generation config that stops at the end of the turn, so every export format starts alike."""
    from tunekit.models import load_model, load_tokenizer

    check_full_model_dir(model_dir)
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code=trust_remote_code)
    model = load_model(str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code)
    _strip_quantization(model)
    summary = _save_stand_alone(model, tokenizer, out_dir, readme)
    summary.update(dtype=dtype, untied_embeddings=False)
    return summary


def verify_merged_dir(path: Path) -> None:
    """Fail loudly if a merged directory still carries adapter or quantization traces."""
    from safetensors import safe_open

    problems = [f"{name} present" for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS) if (path / name).exists()]
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    nested = [config, *(v for v in config.values() if isinstance(v, dict))]
    if any("quantization_config" in c for c in nested):
        problems.append("config.json has a quantization_config")
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        problems.append("no .safetensors weights written")
    for file in weight_files:
        with safe_open(str(file), framework="pt") as handle:
            leftovers = [k for k in handle.keys() if any(m in k for m in ADAPTER_WEIGHT_MARKERS)]
        if leftovers:
            problems.append(f"{file.name} has adapter tensors ({leftovers[0]}, ...)")
    if problems:
        raise TunekitError(f"merged model in {path} is not clean: {'; '.join(problems)}")


def _short_targets(targets) -> str:
    if isinstance(targets, str):
        return targets
    return ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets or []})) or "(none)"


def model_card(recipe, adapter_config: dict, dtype: str) -> str:
    """A factual README for the merged directory: what it was built from and how to load it."""
    base = recipe.base_model
    r, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    scale = f"{alpha / r:g}" if isinstance(r, int) and r and isinstance(alpha, (int, float)) else "?"
    train = recipe.train
    length = f"{train.max_steps} steps" if train.max_steps > 0 else f"{train.epochs:g} epochs"
    # A hub id is useful metadata on the Hub; a local path or tunekit alias would be wrong there.
    looks_like_hub_id = base.count("/") == 1 and not Path(base).exists()
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [tunekit, lora, sft]"]
    if looks_like_hub_id:
        front.insert(1, f"base_model: {base}")
    front.append("---")
    rows = [
        ("base model", f"`{base}`"),
        ("method", f"{train.method} with {train.adapter} adapters, merged into the base weights"),
        ("LoRA rank r / alpha (scale)", f"{r} / {alpha} ({scale})"),
        ("LoRA dropout", adapter_config.get("lora_dropout")),
        ("LoRA target modules", _short_targets(adapter_config.get("target_modules"))),
        ("training length", length),
        ("learning rate / schedule", f"{train.learning_rate:g} / {train.lr_scheduler}"),
        ("batch size x grad. accumulation", f"{train.batch_size} x {train.gradient_accumulation_steps}"),
        ("training data", f"`{Path(recipe.data.train).name}`"),
        ("seed", train.seed),
        ("weights dtype", dtype),
    ]
    table = ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    usage = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "path/to/this/directory"
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens={recipe.serve.max_new_tokens})
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""
    return "\n".join(
        [
            *front,
            "",
            f"# {recipe.run_name}",
            "",
            f"`{base}` fine-tuned with tunekit. The LoRA adapter is merged into the weights, so this",
            "directory is a plain transformers model (safetensors, tokenizer and chat template); peft is",
            "not needed to load it. The generation config stops at the end of the assistant's turn.",
            "",
            "## Training",
            "",
            *table,
            "",
            "## Usage",
            "",
            usage,
            "",
        ]
    )
