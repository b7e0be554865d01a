"""`export(recipe, run) -> ExportResult`: the export stage's entry point.

It writes the adapter directory, a merged safetensors model and its parity check, GGUF files with
their own parity check and quantization gate, and an Ollama Modelfile, as `recipe.export` asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import TunekitError
from tunekit.export.merge import copy_adapter, merge_adapter, model_card, save_full_model
from tunekit.models.trained import check_adapter_dir, trained_artifact
from tunekit.export.parity import DEFAULT_MAX_NEW_TOKENS, check_parity, parity_failure_message, parity_prompts
from tunekit.export.summary import print_summary
from tunekit.runs import RunPaths, write_json


@dataclass
class ExportResult:
    """What the export stage produced; `to_json()` is export_report.json as written.

    Each part is None when the recipe did not ask for it (or an earlier parity failure stopped the export)."""

    report_path: Path
    run_dir: str
    source: str  # "adapter" or "full": what training left in the run directory
    adapter_source: str
    adapter: dict | None = None  # the copied adapter directory
    merged: dict | None = None  # the merged safetensors model
    parity: dict | None = None  # merged model vs base + adapter
    gguf: dict | None = None  # files, metadata, parity, quantization gate
    ollama: dict | None = None  # the Modelfile and its `ollama create` command
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "run_dir": self.run_dir, "source": self.source, "adapter_source": self.adapter_source, "adapter": self.adapter,
            "merged": self.merged, "parity": self.parity, "gguf": self.gguf, "ollama": self.ollama, "timings_s": self.timings_s,
        }


def check_export_requirements(recipe: Recipe) -> None:
    """Fail before any weights are loaded (or, in `tunekit run`, before training) when the recipe asks
    for GGUF files and the extra that writes them is missing."""
    if recipe.export.writes_gguf:
        from tunekit.export.gguf import require_converter, require_llama_cpp

        require_converter()
        require_llama_cpp()


def export(recipe: Recipe, run: RunPaths) -> ExportResult:
    """Write what `recipe.export` asks for into `run.export_dir` and return the result (its report is
    also written to export/export_report.json). Raises TunekitError when the merged model or the F16
    GGUF fails its parity check: such an export is wrong and must not be shipped."""
    check_export_requirements(recipe)
    trained = trained_artifact(run)
    kind, source = trained.kind, trained.path
    if kind == "adapter":
        check_adapter_dir(source, allow_pickle=recipe.allow_pickle)
    options = recipe.export
    result = ExportResult(report_path=run.export_report, run_dir=str(run.root), source=kind, adapter_source=str(source))
    timings = result.timings_s
    if options.adapter and kind == "adapter":
        result.adapter = copy_adapter(source, run.export_adapter_dir)
    if options.writes_merged:
        _timed(timings, "merged", lambda: _merged(recipe, run, kind, source, result))
    failure = _parity_failure(result, run)
    if failure is None and options.writes_gguf:
        from tunekit.export.gguf_parity import gguf_parity_failure_message
        from tunekit.export.gguf_stage import export_gguf

        result.gguf = _timed(timings, "gguf", lambda: export_gguf(recipe, run, run.merged_dir))
        parity = result.gguf["parity"]
        if parity is not None and not parity["passed"]:
            failure = TunekitError(
                gguf_parity_failure_message(parity), hint=f"the GGUF file is wrong; details in {result.report_path}"
            )
    if failure is None and "ollama" in options.formats:
        from tunekit.export.gguf_stage import export_ollama

        result.ollama = export_ollama(recipe, run, run.merged_dir, result.gguf)
    timings["total"] = round(sum(timings.values()), 1)
    write_json(result.report_path, result.to_json())
    print_summary(result.to_json(), result.report_path)
    if failure is not None:
        raise failure
    return result


def _merged(recipe: Recipe, run: RunPaths, kind: str, source: Path, result: ExportResult) -> None:
    from tunekit.models import resolve_model

    options = recipe.export
    loading = {"trust_remote_code": recipe.trust_remote_code, "allow_pickle": recipe.allow_pickle}
    if kind == "full":
        console.print(f"saving the fully fine-tuned model ({options.dtype})…")
        result.merged = save_full_model(source, run.merged_dir, dtype=options.dtype, trust_remote_code=recipe.trust_remote_code)
        result.merged["base_model"] = recipe.base_model
        return
    base_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    console.print(f"merging the adapter into {escape(recipe.base_model)} ({options.dtype})…", soft_wrap=True)
    result.merged = merge_adapter(
        base_path,
        source,
        run.merged_dir,
        dtype=options.dtype,
        readme=model_card(recipe, check_adapter_dir(source, allow_pickle=recipe.allow_pickle), options.dtype),
        **loading,
    )
    result.merged["base_model"] = recipe.base_model
    if options.check_parity:
        prompts = parity_prompts(run, recipe.data.system_prompt)
        # A divergence shows within a few tokens; the eval budget can only shorten the check.
        max_new_tokens = min(recipe.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS)
        console.print(f"checking parity of the merged model on {len(prompts)} prompts…")
        result.parity = check_parity(base_path, source, run.merged_dir, prompts, max_new_tokens, dtype=options.dtype, **loading)


def _timed(timings: dict, name: str, action):
    t0 = time.perf_counter()
    try:
        return action()
    finally:
        timings[name] = round(time.perf_counter() - t0, 1)


def _parity_failure(result: ExportResult, run: RunPaths) -> TunekitError | None:
    if result.parity is not None and not result.parity["passed"]:
        return TunekitError(
            parity_failure_message(result.parity),
            hint=f"the merged model in {run.merged_dir} is wrong; details in {result.report_path}",
        )
    return None
