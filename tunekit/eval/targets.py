"""What is evaluated: the tuned side (adapter, full model, merged export, or an endpoint) and the base.

Each side is an `Answerer`: it answers chat prompts and, when it is a local model, scores the
log-likelihood of reference answers (for perplexity). With an adapter, both sides share one copy
of the weights: the base is the same PeftModel inside `disable_adapter()`, which skips the
adapter layers exactly. A full fine-tuned `model/`, a merged export or an endpoint has no such
switch, so the base is then loaded on its own from the recipe's `base_model`.

The tuned side of an adapter generates with the adapter merged into the weights: an unmerged LoRA
adds two small matmuls and Python per adapted layer to every decoding step (the example: 60 vs
91 tokens/s for the base on the same weights). Merging is done once and not undone, because
unmerging leaves rounding in the base weights and the base must answer from exactly its own
weights, so every base answer comes first (the runner answers side by side in ANSWER_ORDER) and
the base refuses to answer once the weights are merged. On the example the merged side gave the
same 92 task and 300 suite answers as the unmerged one, 72.7 vs 92.9 s; the export's parity
check holds the merged weights to the adapter's greedy answers too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from tunekit.config import Recipe
from tunekit.errors import RunDirError, TunekitError
from tunekit.eval import answer_cache
from tunekit.eval.generation import Decoding, Generations, generate, generate_endpoint, reference_nll
from tunekit.runs import RunPaths


@dataclass
class Answerer:
    name: str
    source: str  # for the report: what produced the answers
    model: object = None
    tokenizer: object = None
    client: object = None
    endpoint_model: str | None = None
    base_switch: bool = False  # a PeftModel answering as its base (adapter disabled)
    merge_to_generate: bool = False  # a PeftModel whose adapter is merged before it first generates
    cache_fingerprint: str | None = None  # the base model's files: its answers are kept (tunekit.eval.answer_cache)
    answered_from_cache: int = 0  # prompts whose answers were read from the cache
    answered: int = 0

    def _context(self):
        if self.base_switch:
            if any(getattr(module, "merged", False) for module in self.model.modules()):
                raise TunekitError("the base side answered after the tuned side merged the adapter (answer the base first)")
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def answer(self, prompts: list[list[dict]], decoding: Decoding, label: str) -> Generations:
        if self.client is not None:
            return generate_endpoint(self.client, self.endpoint_model, prompts, decoding, label=label)
        if self.merge_to_generate and prompts:
            self.model.merge_adapter()
            self.merge_to_generate = False  # merged for good (PEFT warns per layer on a second merge)
        cache_key = answer_cache.key(self.cache_fingerprint, self.tokenizer, prompts, decoding) if self.cache_fingerprint and prompts else None
        self.answered += len(prompts)
        if cache_key is not None and (stored := answer_cache.load(cache_key)) is not None and len(stored.outputs) == len(prompts):
            self.answered_from_cache += len(prompts)
            return stored
        with self._context():
            generations = generate(self.model, self.tokenizer, prompts, decoding, label=label)
        if cache_key is not None:
            answer_cache.store(cache_key, generations)
        return generations

    @property
    def local(self) -> bool:
        return self.model is not None

    def nll(self, prompts, references, batch_size: int):
        with self._context():
            return reference_nll(self.model, self.tokenizer, prompts, references, batch_size=batch_size)


ANSWER_ORDER = ("base", "tuned")  # the base first: the tuned side may merge the shared weights


def _mergeable(model) -> bool:
    """Whether every adapter layer can merge into full-precision weights (not a quantized base)."""
    import torch

    layers = [m for m in model.modules() if hasattr(m, "merge") and hasattr(m, "base_layer")]
    return bool(layers) and all(getattr(m.get_base_layer(), "weight", None) is not None
                                and m.get_base_layer().weight.dtype in (torch.float32, torch.float16, torch.bfloat16) for m in layers)


def resolve_target(recipe: Recipe, run: RunPaths) -> str:
    """`eval.target`, with `auto` meaning what training left: `model` for a full fine-tune, else `adapter`."""
    target = recipe.eval.target
    if target == "auto":
        from tunekit.models.trained import trained_artifact

        return "model" if trained_artifact(run).kind == "full" else "adapter"
    return target


def _to_device(model):
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval()


def _load_dir(path: Path, recipe: Recipe):
    from tunekit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(path), trust_remote_code=recipe.trust_remote_code)
    model = load_model(str(path), trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    return _to_device(model), tokenizer


def _load_base(recipe: Recipe):
    """(model, tokenizer, its folder): the base model with the recipe's chat template (the one the tuned side was trained with), and a
    row for each token the template added, so both sides are asked in the same format."""
    from tunekit.models import load_model, load_tokenizer, resolve_model
    from tunekit.models.templates import resize_for_tokenizer

    path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    tokenizer = load_tokenizer(path, trust_remote_code=recipe.trust_remote_code, chat_template=recipe.chat_template)
    model = load_model(path, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    resize_for_tokenizer(model, tokenizer)
    return _to_device(model), tokenizer, path


def load_sides(recipe: Recipe, run: RunPaths, *, need_base: bool) -> dict[str, Answerer]:
    """{"tuned": ..., "base": ...} (base only when `need_base`)."""
    target = resolve_target(recipe, run)
    if target == "adapter":
        from tunekit.models import resolve_model
        from tunekit.models.trained import load_with_adapter

        adapter_dir = run.require(run.adapter_dir / "adapter_config.json", "train").parent
        base_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
        model, tokenizer = load_with_adapter(
            base_path, adapter_dir, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle
        )
        model = _to_device(model)
        source = f"{recipe.base_model} + {adapter_dir}"
        sides = {"tuned": Answerer("tuned", source, model, tokenizer, merge_to_generate=_mergeable(model))}
        if need_base:
            fingerprint = _base_fingerprint(recipe, base_path, model)
            sides["base"] = Answerer("base", recipe.base_model, model, tokenizer, base_switch=True, cache_fingerprint=fingerprint)
        return sides
    if target == "endpoint":
        sides = {"tuned": _endpoint(recipe)}
    else:
        path = run.model_dir if target == "model" else run.merged_dir
        stage = "train" if target == "model" else "export"
        run.require(path / "config.json", stage)
        model, tokenizer = _load_dir(path, recipe)
        sides = {"tuned": Answerer("tuned", str(path), model, tokenizer)}
    if need_base:
        model, tokenizer, base_path = _load_base(recipe)
        sides["base"] = Answerer("base", recipe.base_model, model, tokenizer, cache_fingerprint=_base_fingerprint(recipe, base_path, model))
    return sides


def _base_fingerprint(recipe: Recipe, base_path: str, model) -> str | None:
    """The base model's file fingerprint when its answers may be kept: caching on, and the embedding
    exactly the file's (rows added for new tokens are initialised at random when loaded)."""
    import json

    if not recipe.eval.cache_base_answers:
        return None
    try:
        vocab = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    if vocab is None or model.get_input_embeddings().num_embeddings != vocab:
        return None
    return answer_cache.model_fingerprint(base_path)


def _endpoint(recipe: Recipe) -> Answerer:
    import openai

    cfg = recipe.eval.endpoint
    api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "tunekit"
    if cfg.api_key_env and not api_key:
        raise TunekitError(f"eval.endpoint.api_key_env: environment variable {cfg.api_key_env} is not set")
    client = openai.OpenAI(base_url=cfg.base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=2)
    model = cfg.model or recipe.run_name  # what `tunekit serve RUN` serves the run under
    return Answerer("tuned", f"{cfg.base_url} ({model})", client=client, endpoint_model=model)


def require_trained(recipe: Recipe, run: RunPaths) -> None:
    """Fail early, before loading anything, when the chosen target has nothing to load."""
    target = resolve_target(recipe, run)
    if target == "adapter":
        run.require(run.adapter_dir / "adapter_config.json", "train")
    elif target == "model":
        run.require(run.model_dir / "config.json", "train")
    elif target == "merged" and not (run.merged_dir / "config.json").is_file():
        raise RunDirError(f"{run.merged_dir / 'config.json'} not found", hint="run `tunekit export` first (export.merged: true)")
