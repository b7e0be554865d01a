"""Which GGUF file the `llamacpp` backend serves for each `tunekit serve` argument.

A `.gguf` path is served as it is; a run directory serves one of its exported files
(`export/<run>-<TYPE>.gguf`): the type `serve.gguf` names, else the smallest file that passed the
quantization gate of `export/quant_report.json`; the embedded default model serves the GGUF file it
ships as. A run's adapter is served merged into that file (one GGUF per tuned model); an adapter
directory (PEFT) or a GGUF LoRA file is served as a LoRA on the shared base GGUF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunekit.errors import ModelError
from tunekit.serve.sources import Source, split_name

GGUF_HINT = (
    "the llamacpp backend serves GGUF files: pass a .gguf file, a run directory exported with "
    "export.formats=[gguf] (`tunekit export`), or 'smollm2-135m-instruct'; or serve with --backend hf"
)


@dataclass
class GgufSource:
    name: str
    path: Path
    kind: str  # "model" (a complete GGUF) or "adapter" (a GGUF LoRA file, served on the base)
    system_prompt: str | None = None


def gguf_kind(path: Path) -> str:
    """'adapter' for a GGUF LoRA file (general.type = adapter), else 'model'."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.type")
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable GGUF file: {exc}", hint=GGUF_HINT) from None
    if field is None:
        return "model"
    value = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return "adapter" if value == "adapter" else "model"


def run_gguf(run_dir: Path, wanted: str | None) -> Path:
    """The run's exported GGUF: `wanted` (F16, Q8_0, ...) or the smallest one the quantization gate passed."""
    from tunekit.config import load_recipe
    from tunekit.runs import RunPaths

    run = RunPaths(run_dir)
    recipe = load_recipe(run.recipe, check_files=False)
    files = {p.name.removeprefix(f"{recipe.run_name}-").removesuffix(".gguf"): p for p in sorted(run.export_dir.glob("*.gguf"))}
    if not files:
        raise ModelError(f"run {run_dir} has no GGUF export (no {run.export_dir}/*.gguf)", hint=GGUF_HINT)
    if wanted is not None:
        match = {t.upper(): p for t, p in files.items()}.get(wanted.upper())
        if match is None:
            raise ModelError(f"serve.gguf: run {run_dir} has no {wanted} file", hint=f"choose one of {', '.join(files)}")
        return match
    passed = dict(files)
    if run.quant_report.is_file():
        report = json.loads(run.quant_report.read_text(encoding="utf-8"))
        for blocked in report.get("blocked", []):
            passed.pop(blocked, None)
    if not passed:
        raise ModelError(f"every GGUF file of run {run_dir} was blocked by the quantization gate", hint="set serve.gguf to serve one anyway")
    return min(passed.values(), key=lambda p: p.stat().st_size)


def resolve_gguf(spec: str | Source, wanted: str | None = None) -> GgufSource:
    """One `tunekit serve` argument (NAME=PATH names it) as the GGUF file to serve. Loads nothing."""
    from tunekit.models.loading import EMBEDDED_MODELS, _embedded_gguf

    if isinstance(spec, Source):  # a `models:` entry of a serving file
        resolved = resolve_gguf(spec.path, wanted)
        resolved.name = spec.name
        resolved.system_prompt = spec.system_prompt or resolved.system_prompt
        return resolved
    name, raw = split_name(str(spec))
    path = Path(raw).expanduser()
    if raw in EMBEDDED_MODELS:
        return GgufSource(name or raw, _embedded_gguf(raw), "model")
    if path.is_file() and path.suffix == ".gguf":
        return GgufSource(name or path.stem, path, gguf_kind(path))
    if path.is_dir() and (path / "adapter_config.json").is_file() and (path.parent / "recipe.yaml").is_file():
        path = path.parent  # a run's adapter/ folder: the run's export serves it merged
    if path.is_dir() and (path / "recipe.yaml").is_file():
        from tunekit.config import load_recipe

        recipe = load_recipe(path / "recipe.yaml", check_files=False)
        return GgufSource(name or path.resolve().name, run_gguf(path, wanted), "model", recipe.data.system_prompt)
    if path.is_dir() and (path / "adapter_config.json").is_file():  # converted to a GGUF LoRA when it is attached
        return GgufSource(name or path.resolve().name, path, "adapter")
    raise ModelError(f"cannot serve '{raw}' with llama.cpp: not a .gguf file or an exported run", hint=GGUF_HINT)


def base_gguf(adapters: list[GgufSource]) -> GgufSource:
    """The complete GGUF that PEFT adapters served without one share: their base as GGUF (the embedded
    model's own file; a model directory converted once to F16 in tunekit's cache)."""
    from tunekit.models import resolve_model
    from tunekit.models.loading import EMBEDDED_MODELS, tunekit_home
    from tunekit.serve.sources import _adapter_base, base_name

    peft = [a for a in adapters if a.path.is_dir()]
    if not peft:
        raise ModelError("GGUF LoRA files need their base model's GGUF served with them", hint="add the base's .gguf path")
    references = {_adapter_base(a.path) for a in peft}
    if len(references) > 1:
        raise ModelError(f"the adapters were trained on different bases: {', '.join(sorted(references))}", hint="serve one base per server")
    reference = references.pop()
    if reference in EMBEDDED_MODELS or reference.endswith(".gguf"):
        return resolve_gguf(reference)
    model_dir = Path(resolve_model(reference))
    from tunekit.export.gguf import convert_to_gguf

    stat = (model_dir / "config.json").stat()
    target = tunekit_home() / "gguf-base" / f"{model_dir.resolve().name}-{stat.st_mtime_ns}-F16.gguf"
    path = target if target.is_file() else convert_to_gguf(model_dir, target, "F16")
    return GgufSource(base_name(reference), path, "model")
