"""The export stage: the adapter directory, a merged safetensors model, and a parity check."""

from __future__ import annotations

from rich.markup import escape

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import TunekitError
from tunekit.export.merge import check_adapter_dir, copy_adapter, merge_adapter, model_card
from tunekit.export.parity import DEFAULT_MAX_NEW_TOKENS, check_parity, parity_failure_message, parity_prompts
from tunekit.export.summary import print_summary
from tunekit.runs import RunPaths, write_json

__all__ = ["run_export", "check_parity", "merge_adapter", "copy_adapter", "parity_prompts"]


def export_report_path(run: RunPaths):
    return run.export_dir / "export_report.json"


def run_export(recipe: Recipe, run: RunPaths) -> dict:
    """Write what `recipe.export` asks for into `run.export_dir` and return the export report
    (also written to export/export_report.json). Raises TunekitError when the merged model fails
    the parity check: such an export is wrong and must not be shipped."""
    from tunekit.models import resolve_model

    adapter_dir = run.require(run.adapter_dir, "train")
    adapter_config = check_adapter_dir(adapter_dir)
    options = recipe.export
    report: dict = {"run_dir": str(run.root), "adapter_source": str(adapter_dir), "adapter": None, "merged": None, "parity": None}
    if options.adapter:
        report["adapter"] = copy_adapter(adapter_dir, run.export_dir / "adapter")
    if options.merged:
        base_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
        loading = {"trust_remote_code": recipe.trust_remote_code, "allow_pickle": recipe.allow_pickle}
        console.print(f"merging the adapter into {escape(recipe.base_model)} ({options.dtype})…", soft_wrap=True)
        report["merged"] = merge_adapter(
            base_path,
            adapter_dir,
            run.merged_dir,
            dtype=options.dtype,
            readme=model_card(recipe, adapter_config, options.dtype),
            **loading,
        )
        report["merged"]["base_model"] = recipe.base_model
        if options.check_parity:
            prompts = parity_prompts(run, recipe.data.system_prompt)
            # A divergence shows within a few tokens; the eval budget can only shorten the check.
            max_new_tokens = min(recipe.eval.max_new_tokens, DEFAULT_MAX_NEW_TOKENS)
            console.print(f"checking parity of the merged model on {len(prompts)} prompts…")
            report["parity"] = check_parity(
                base_path, adapter_dir, run.merged_dir, prompts, max_new_tokens, dtype=options.dtype, **loading
            )
    write_json(export_report_path(run), report)
    print_summary(report, export_report_path(run))
    if report["parity"] is not None and not report["parity"]["passed"]:
        raise TunekitError(
            parity_failure_message(report["parity"]),
            hint=f"the merged model in {run.merged_dir} is wrong; details in {export_report_path(run)}",
        )
    return report
