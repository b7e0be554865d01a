"""Load something servable (a run, a model directory, a base model) and answer chat requests.

One model, one lock: a torch model with a KV cache is not safe to drive from several threads at
once, and on a small machine running requests one after another is also the fastest order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunekit.errors import ModelError, RunDirError, TunekitError
from tunekit.runs import RunPaths


class PromptTooLongError(TunekitError):
    """The prompt plus the requested completion does not fit the model's context window."""


class ChatTemplateError(TunekitError):
    """The model's chat template refused the conversation (e.g. roles that must alternate)."""


class Completion(NamedTuple):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length" (the token budget ran out)


_SERVE_HINT = (
    "pass a run directory (recipe.yaml + adapter/), a model directory (config.json + *.safetensors), "
    "a recipe file, or a base model such as 'smollm2-135m-instruct'"
)


def _looks_local(name: str) -> bool:
    """A missing path that cannot be a hub id (`org/model`), or whose first folder exists here:
    `runs/my-rnu` is a mistyped run directory, not a model to look up on the hub (slowly, offline)."""
    path = Path(name)
    if path.exists():
        return False
    if path.is_absolute() or name.startswith((".", "~")) or len(path.parts) > 2 or path.suffix in (".gguf", ".yaml", ".yml"):
        return True
    return len(path.parts) == 2 and Path(path.parts[0]).is_dir()


@dataclass
class Engine:
    model: Any
    tokenizer: Any
    name: str
    source: str  # what was loaded, for logs: a model dir, or "base + adapter"
    created: int = field(default_factory=lambda: int(time.time()))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: Path | str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> "Engine":
        """Load a run directory, a recipe file, a plain model directory, or a base model name."""
        path = Path(path).expanduser()
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            from tunekit.config import load_recipe

            path = load_recipe(path, check_files=False).run_dir
            if not path.is_dir():
                raise RunDirError(
                    f"the run directory of this recipe does not exist yet: {path}", hint="run `tunekit train` first"
                )
        if path.is_dir() and (path / "recipe.yaml").is_file():
            return cls._from_run(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelError(f"{path} is neither a run directory nor a model directory", hint=_SERVE_HINT)
        if path.is_dir():
            name = path.resolve().name  # `.` has no name of its own
            return cls._from_model(str(path), name, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        served_name = path.stem if path.is_file() and path.suffix == ".gguf" else str(path)
        return cls._from_base_model(str(path), served_name, allow_pickle, trust_remote_code)

    @classmethod
    def _from_run(cls, run_dir: Path, *, allow_pickle: bool, trust_remote_code: bool) -> "Engine":
        from tunekit.config import load_recipe

        run = RunPaths(run_dir)
        recipe = load_recipe(run.recipe, check_files=False)  # serving needs the weights, not the training data
        # The user opted in to these for this base model when writing the recipe.
        allow_pickle = allow_pickle or recipe.allow_pickle
        trust_remote_code = trust_remote_code or recipe.trust_remote_code
        name = run_dir.resolve().name
        # A merged export, or a full fine-tune's own model/, is a complete model: no adapter to attach.
        for model_dir in (run.merged_dir, run.model_dir):
            if (model_dir / "config.json").is_file():
                return cls._from_model(str(model_dir), name, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        run.require(run.adapter_dir / "adapter_config.json", "train")

        from peft import PeftModel

        from tunekit.models import load_model, load_tokenizer, resolve_model

        base_path = resolve_model(recipe.base_model, allow_pickle=allow_pickle)
        base = load_model(base_path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        model = PeftModel.from_pretrained(base, str(run.adapter_dir))
        # Training saves the tokenizer (and its chat template) next to the adapter; it wins over the base's.
        has_tokenizer = (run.adapter_dir / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(str(run.adapter_dir) if has_tokenizer else base_path, trust_remote_code=trust_remote_code)
        return cls._ready(model, tokenizer, name, f"{base_path} + adapter {run.adapter_dir}")

    @classmethod
    def _from_model(cls, model_path: str, name: str, *, allow_pickle: bool, trust_remote_code: bool) -> "Engine":
        from tunekit.models import load_model, load_tokenizer, resolve_model

        model_path = resolve_model(model_path, allow_pickle=allow_pickle)  # checks safetensors vs pickle
        tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        model = load_model(model_path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        return cls._ready(model, tokenizer, name, model_path)

    @classmethod
    def _from_base_model(cls, name: str, served_name: str, allow_pickle: bool, trust_remote_code: bool) -> "Engine":
        from tunekit.models import resolve_model
        from tunekit.models.loading import EMBEDDED_MODELS

        if name not in EMBEDDED_MODELS and _looks_local(name):
            raise ModelError(f"cannot serve '{name}': no such run directory, model directory or file", hint=_SERVE_HINT)
        try:
            model_path = resolve_model(name, allow_pickle=allow_pickle)
            return cls._from_model(model_path, served_name, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        except ModelError as exc:
            if name in EMBEDDED_MODELS or Path(name).exists():
                raise
            reason = exc.message.splitlines()[0][:300]
            raise ModelError(
                f"cannot serve '{name}': no such run or model directory, and loading it as a hub id failed ({reason})",
                hint=_SERVE_HINT,
            ) from None

    @classmethod
    def _ready(cls, model, tokenizer, name: str, source: str) -> "Engine":
        import torch

        # Weights load on the CPU; a server on a machine with a GPU is expected to use it.
        # (CUDA_VISIBLE_DEVICES="" keeps the server on the CPU.)
        if torch.cuda.is_available():
            model.to("cuda")
        model.eval()
        return cls(model=model, tokenizer=tokenizer, name=name, source=source)

    # ------------------------------------------------------------ generation

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)

    @property
    def eos_token_ids(self) -> list[int]:
        from tunekit.models import end_of_turn_ids

        return end_of_turn_ids(self.tokenizer, self.model.generation_config)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of the conversation under the model's chat template, ready for the answer."""
        from jinja2 import TemplateError

        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {exc}") from None
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def chat(
        self,
        messages: list[dict],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Answer a conversation; greedy when temperature is 0, cut at the first stop string."""
        import torch

        prompt = self.encode_chat(messages)
        limit = self.context_length
        if limit is not None and len(prompt) + max_tokens > limit:
            raise PromptTooLongError(
                f"this model's maximum context length is {limit} tokens, but {len(prompt) + max_tokens} were requested "
                f"({len(prompt)} in the messages, {max_tokens} in the completion); shorten the messages or lower max_tokens"
            )
        eos = self.eos_token_ids
        kwargs = self._decoding_kwargs(max_tokens, temperature, top_p, eos)
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)  # end generation early, not only the text
        input_ids = torch.tensor([prompt], device=self.model.device)
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        generated = output[0, len(prompt) :].tolist()
        return self._finish(generated, eos, max_tokens, stop, len(prompt))

    def _decoding_kwargs(self, max_tokens: int, temperature: float, top_p: float, eos: list[int]) -> dict:
        # Every knob is set explicitly: a checkpoint's generation_config.json (top_k, repetition
        # penalty...) must not change what an OpenAI request means.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        kwargs = {
            "max_new_tokens": max_tokens,
            "min_new_tokens": 0,
            "repetition_penalty": 1.0,
            "num_beams": 1,
            "eos_token_id": eos,
            "pad_token_id": pad,
        }
        if temperature > 0:  # top_k=0: OpenAI's sampling has no top-k cut
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=1.0, top_p=1.0)
        return kwargs

    def _finish(
        self, generated: list[int], eos: list[int], max_tokens: int, stop: list[str] | None, prompt_tokens: int
    ) -> Completion:
        ended_on_eos = bool(generated) and generated[-1] in eos
        body = generated[:-1] if ended_on_eos else generated
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop or []) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        finish = "stop" if ended_on_eos or cut >= 0 or len(generated) < max_tokens else "length"
        return Completion(text, prompt_tokens, len(generated), finish)
