"""The export stage: the adapter directory, a merged safetensors model and its parity check, GGUF files
with their own parity check and quantization gate, and an Ollama Modelfile."""

from __future__ import annotations

import time

from rich.markup import escape

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import RunDirError, TunekitError
from tunekit.export.merge import check_adapter_dir, copy_adapter, merge_adapter, model_card, save_full_model
from tunekit.export.parity import DEFAULT_MAX_NEW_TOKENS, check_parity, parity_failure_message, parity_prompts
from tunekit.export.summary import print_summary
from tunekit.runs import RunPaths, write_json

__all__ = ["run_export", "check_export_requirements", "check_parity", "merge_adapter", "copy_adapter", "parity_prompts", "trained_source"]


def export_report_path(run: RunPaths):
    return run.export_dir / "export_report.json"


def full_model_dir(run: RunPaths):
    # Where a full fine-tune saves its weights (the run layout names `adapter/ | model/`).
    return getattr(run, "model_dir", run.root / "model")


def trained_source(run: RunPaths) -> tuple[str, object]:
    """("adapter", dir) or ("full", dir): what training left in the run directory."""
    if run.adapter_dir.exists():
        return "adapter", run.adapter_dir
    if full_model_dir(run).exists():
        return "full", full_model_dir(run)
    raise RunDirError(
        f"neither {run.adapter_dir} nor {full_model_dir(run)} found", hint="run `tunekit train` first (or `tunekit run` for every stage)"
    )


def _merged(recipe: Recipe, run: RunPaths, kind: str, source, report: dict) -> None:
    from tunekit.models import resolve_model

    options = recipe.export
    loading = {"trust_remote_code": recipe.trust_remote_code, "allow_pickle": recipe.allow_pickle}
    if kind == "full":
        console.print(f"saving the fully fine-tuned model ({options.dtype})…")
        report["merged"] = save_full_model(source, run.merged_dir, dtype=options.dtype, trust_remote_code=recipe.trust_remote_code)
        report["merged"]["base_model"] = recipe.base_model
        return
    base_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    console.print(f"merging the adapter into {escape(recipe.base_model)} ({options.dtype})…", soft_wrap=True)
    report["merged"] = merge_adapter(
        base_path,
        source,
        run.merged_dir,
        dtype=options.dtype,
        readme=model_card(recipe, check_adapter_dir(source), options.dtype),
        **loading,
    )
    report["merged"]["base_model"] = recipe.base_model
    if options.check_parity:
        prompts = parity_prompts(run, recipe.data.system_prompt)
        # A divergence shows within a few tokens; the eval budget can only shorten the check.
        max_new_tokens = min(recipe.eval.max_new_tokens, DEFAULT_MAX_NEW_TOKENS)
        console.print(f"checking parity of the merged model on {len(prompts)} prompts…")
        report["parity"] = check_parity(base_path, source, run.merged_dir, prompts, max_new_tokens, dtype=options.dtype, **loading)


def check_export_requirements(recipe: Recipe) -> None:
    """Fail before any weights are loaded (or, in `tunekit run`, before training) when the recipe asks
    for GGUF files and the extra that writes them is missing."""
    if recipe.export.writes_gguf:
        from tunekit.export.gguf import require_converter, require_llama_cpp

        require_converter()
        require_llama_cpp()


def _timed(timings: dict, name: str, action):
    t0 = time.perf_counter()
    try:
        return action()
    finally:
        timings[name] = round(time.perf_counter() - t0, 1)


def run_export(recipe: Recipe, run: RunPaths) -> dict:
    """Write what `recipe.export` asks for into `run.export_dir` and return the export report
    (also written to export/export_report.json). Raises TunekitError when the merged model or the
    F16 GGUF fails its parity check: such an export is wrong and must not be shipped."""
    check_export_requirements(recipe)
    kind, source = trained_source(run)
    if kind == "adapter":
        check_adapter_dir(source)
    options = recipe.export
    report: dict = {"run_dir": str(run.root), "source": kind, "adapter_source": str(source), "adapter": None}
    report.update(merged=None, parity=None, gguf=None, ollama=None, timings_s={})
    timings = report["timings_s"]
    if options.adapter and kind == "adapter":
        report["adapter"] = copy_adapter(source, run.export_dir / "adapter")
    if options.writes_merged:
        _timed(timings, "merged", lambda: _merged(recipe, run, kind, source, report))
    failure = _parity_failure(report, run)
    if failure is None and options.writes_gguf:
        from tunekit.export.gguf_parity import gguf_parity_failure_message
        from tunekit.export.gguf_stage import export_gguf

        report["gguf"] = _timed(timings, "gguf", lambda: export_gguf(recipe, run, run.merged_dir))
        parity = report["gguf"]["parity"]
        if parity is not None and not parity["passed"]:
            failure = TunekitError(
                gguf_parity_failure_message(parity), hint=f"the GGUF file is wrong; details in {export_report_path(run)}"
            )
    if failure is None and "ollama" in options.formats:
        from tunekit.export.gguf_stage import export_ollama

        report["ollama"] = export_ollama(recipe, run, run.merged_dir, report["gguf"])
    timings["total"] = round(sum(timings.values()), 1)
    write_json(export_report_path(run), report)
    print_summary(report, export_report_path(run))
    if failure is not None:
        raise failure
    return report


def _parity_failure(report: dict, run: RunPaths) -> TunekitError | None:
    if report["parity"] is not None and not report["parity"]["passed"]:
        return TunekitError(
            parity_failure_message(report["parity"]),
            hint=f"the merged model in {run.merged_dir} is wrong; details in {export_report_path(run)}",
        )
    return None
