"""What `tunekit serve` was pointed at, resolved before any weights load.

Each path becomes a `Source`: a complete model (a base model, a full fine-tune, a merged export)
or an adapter on a named base. One server holds at most one complete model and any number of
adapters of that same base; anything else is refused here, with the reason, before loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunekit.errors import ModelError, RunDirError

SERVE_HINT = (
    "pass run directories (recipe.yaml + adapter/), adapter directories (adapter_config.json), a model directory "
    "(config.json + *.safetensors), a recipe file, or a base model such as 'smollm2-135m-instruct'; "
    "NAME=PATH serves PATH under NAME"
)


@dataclass
class Source:
    name: str  # the id clients send as `model`
    kind: Literal["model", "adapter"]
    path: str  # model: what from_pretrained loads; adapter: the adapter directory
    base: str  # the base model reference (recipe.base_model, or the model itself for kind=model)
    system_prompt: str | None = None  # applied when a request brings no system message
    allow_pickle: bool = False
    trust_remote_code: bool = False
    chat_template: str | None = None  # the recipe's `chat_template`, for a base that has none of its own
    version: int | None = None  # the registry version served (NAME@ALIAS / NAME@VERSION), else None
    follows: str | None = None  # "NAME@ALIAS" when the served version follows that registry alias


def _looks_local(name: str) -> bool:
    """A missing path that cannot be a hub id (`org/model`), or whose first folder exists here:
    `runs/my-rnu` is a mistyped run directory, not a model to look up on the hub (slowly, offline)."""
    path = Path(name)
    if path.exists():
        return False
    if path.is_absolute() or name.startswith((".", "~")) or len(path.parts) > 2 or path.suffix in (".gguf", ".yaml", ".yml"):
        return True
    return len(path.parts) == 2 and Path(path.parts[0]).is_dir()


def split_name(spec: str) -> tuple[str | None, str]:
    """'name=path' -> (name, path); a plain path -> (None, path)."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and rest:
        return name, rest
    return None, spec


def _from_run(run_dir: Path, name: str | None, allow_pickle: bool, trust_remote_code: bool) -> Source:
    from tunekit.config import load_recipe
    from tunekit.models.trained import trained_artifact
    from tunekit.runs import RunPaths

    recipe = load_recipe(run_dir / "recipe.yaml", check_files=False)  # serving needs weights, not training data
    trained = trained_artifact(RunPaths(run_dir))
    adapter = trained.kind == "adapter"
    return Source(
        name=name or run_dir.resolve().name,
        kind="adapter" if adapter else "model",
        path=str(trained.path),
        base=recipe.base_model if adapter else str(trained.path),  # a full fine-tune is its own base
        system_prompt=recipe.data.system_prompt,
        # The user opted in to these for this base model when writing the recipe.
        allow_pickle=allow_pickle or recipe.allow_pickle,
        trust_remote_code=trust_remote_code or recipe.trust_remote_code,
        chat_template=recipe.chat_template,
    )


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter_dir}/adapter_config.json names no base model", hint="serve it next to its base model or run")
    return str(base)


def is_registry_ref(raw: str) -> bool:
    """`NAME@ALIAS` or `NAME@VERSION` that is not a path here: a registry version to serve."""
    return "@" in raw and "/" not in raw and not Path(raw).expanduser().exists()


def from_registry(ref: str, name: str | None = None, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Source:
    """The registry version `ref` names (NAME@ALIAS, NAME@VERSION), served from the registry's own copy
    of its files (the run directory may be gone), after checking their digests."""
    from tunekit import registry

    parsed = registry.parse_ref(ref)
    record = registry.resolve(parsed)
    problems = registry.verify_version(record)
    if problems:
        raise ModelError(
            f"{record.model}@{record.version} (from {ref}) fails its digest check, so it is not served: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            hint=f"`tunekit registry verify {record.model}@{record.version}` lists the problems; register the run again",
        )
    source = _from_run(record.store_path, name or ref, allow_pickle, trust_remote_code)
    source.version = record.version
    source.follows = str(parsed) if parsed.alias else None
    return source


def resolve_source(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Source:
    """One `tunekit serve` argument (optionally NAME=PATH or NAME=REGISTRY_REF) as a Source. Loads nothing."""
    from tunekit.models.loading import EMBEDDED_MODELS

    name, raw = split_name(str(spec))
    path = Path(raw).expanduser()
    flags = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    if is_registry_ref(raw):
        return from_registry(raw, name, **flags)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from tunekit.config import load_recipe

        run_dir = load_recipe(path, check_files=False).run_dir
        if not run_dir.is_dir():
            raise RunDirError(f"the run directory of this recipe does not exist yet: {run_dir}", hint="run `tunekit train` first")
        return _from_run(run_dir, name, allow_pickle, trust_remote_code)
    if path.is_dir() and (path / "recipe.yaml").is_file():
        return _from_run(path, name, allow_pickle, trust_remote_code)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        parent = path.parent
        if (parent / "recipe.yaml").is_file():  # the adapter/ folder of a run: its recipe knows the base
            source = _from_run(parent, name or parent.resolve().name, allow_pickle, trust_remote_code)
            if source.kind == "adapter":
                return source
        return Source(name or path.resolve().name, "adapter", str(path), _adapter_base(path), **flags)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"{path} is neither a run, adapter nor model directory", hint=SERVE_HINT)
    if path.is_dir():
        return Source(name or path.resolve().name, "model", str(path), str(path), **flags)
    if raw not in EMBEDDED_MODELS and _looks_local(raw):
        raise ModelError(f"cannot serve '{raw}': no such run directory, model directory or file", hint=SERVE_HINT)
    served = name or (path.stem if path.suffix == ".gguf" else raw)
    return Source(served, "model", raw, raw, **flags)


def same_base(a: str, b: str, *, allow_pickle: bool = False) -> bool:
    """Whether two base model references name the same weights (aliases and paths resolved)."""
    if a == b:
        return True
    from tunekit.models import resolve_model

    try:
        ra, rb = resolve_model(a, allow_pickle=allow_pickle), resolve_model(b, allow_pickle=allow_pickle)
    except ModelError:
        return False
    if Path(ra).exists() and Path(rb).exists():
        return Path(ra).resolve() == Path(rb).resolve()
    return ra == rb


def base_name(reference: str) -> str:
    """The id a base model is listed under: an alias or hub id as written, a directory by its name."""
    path = Path(reference).expanduser()
    return path.resolve().name if path.exists() else reference


def plan(sources: list[Source]) -> tuple[Source, list[Source]]:
    """(the complete model to load, the adapters to attach to it), or ModelError with the reason.

    With only adapters, their common base is the complete model (listed under its own name)."""
    if not sources:
        raise ModelError("nothing to serve", hint=SERVE_HINT)
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelError(f"two models would be served as '{duplicates[0]}'", hint="give each its own name: NAME=PATH")
    complete = [s for s in sources if s.kind == "model"]
    adapters = [s for s in sources if s.kind == "adapter"]
    if len(complete) > 1:
        listed = ", ".join(f"{s.name} ({s.path})" for s in complete)
        raise ModelError(
            f"one server holds one complete model, got {len(complete)}: {listed}",
            hint="serve adapters of one base together; start a second server for another complete model",
        )
    if complete:
        base = complete[0]
    else:
        first = adapters[0]
        base = Source(
            base_name(first.base), "model", first.base, first.base, None, first.allow_pickle, first.trust_remote_code, first.chat_template
        )
        if base.name in names:
            base.name = f"{base.name}-base"
    for adapter in adapters:
        if not same_base(adapter.base, base.base, allow_pickle=base.allow_pickle):
            raise ModelError(
                f"adapter '{adapter.name}' was trained on '{adapter.base}', but this server's base model is '{base.base}'",
                hint="serve adapters of one base model together; start another server for the other base",
            )
    return base, adapters
