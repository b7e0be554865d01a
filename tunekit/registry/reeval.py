"""Evaluate the alias's current holder on the candidate's test set, so a promotion gate compares like with like.

When the two versions were evaluated on different test sets, their numbers cannot be compared.
Rather than refuse, promotion can score the holder again on exactly the examples the candidate
was scored on: the candidate's scored test rows (contaminated ones it left out stay out) and its
eval settings (metrics, decoding, forgetting suite), with the holder's own trained artifact, base
model and data settings (its system prompt). The run happens in a scratch run directory built
from the two stored versions, through the eval stage itself; nothing of it is registered.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from tunekit.errors import RegistryError
from tunekit.registry.collect import forgetting_fingerprint
from tunekit.registry.records import VersionRecord
from tunekit.runs import RunPaths, read_jsonl, write_jsonl


def _scored_rows(candidate: VersionRecord) -> list[dict]:
    """The candidate's test rows exactly as its eval scored them (cut to max_examples, contaminated ones out)."""
    run = candidate.run
    if not run.split("test").is_file():
        raise RegistryError(f"{candidate.ref} has no stored test set (data/test.jsonl) to evaluate the current holder on")
    rows = read_jsonl(run.split("test"))
    predictions = run.predictions
    if predictions.is_file():
        kept = {p["index"] for p in read_jsonl(predictions) if not p.get("excluded")}
        return [row for i, row in enumerate(rows) if i in kept]
    max_examples = ((_recipe(candidate).get("eval") or {}).get("max_examples"))
    return rows[:max_examples] if max_examples else rows


def _recipe(record: VersionRecord) -> dict:
    if not record.run.recipe.is_file():
        raise RegistryError(f"{record.ref} has no stored recipe.yaml, so it cannot be evaluated again")
    return yaml.safe_load(record.run.recipe.read_text(encoding="utf-8")) or {}


def _candidate_eval(candidate: VersionRecord) -> dict:
    """The eval section the candidate was really evaluated with: its recipe's, corrected by what its report
    says was run (`tunekit eval --set ...` overrides are not written back to recipe.yaml)."""
    section = dict(_recipe(candidate).get("eval") or {})
    if not candidate.run.eval_report.is_file():
        return section
    report = json.loads(candidate.run.eval_report.read_text(encoding="utf-8"))
    settings = report.get("settings") or {}
    section.update({key: settings[key] for key in ("metrics", "max_new_tokens", "batch_size") if settings.get(key) is not None})
    section["compare_base"] = "base" in (report.get("model") or {})
    section["forgetting"] = {**(section.get("forgetting") or {}), "enabled": bool(report.get("forgetting"))}
    return section


def _scratch_run(holder: VersionRecord, candidate: VersionRecord, root: Path) -> RunPaths:
    run = RunPaths(root / "holder-on-candidate")
    shutil.copytree(holder.artifact_path, run.root / holder.artifact_path.name)
    for path in run.root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the store's copies are read-only
    recipe = _recipe(holder)
    recipe["eval"] = {**_candidate_eval(candidate), "gates": [], "max_examples": None}
    recipe["eval"]["contamination"] = {**(recipe["eval"].get("contamination") or {}), "enabled": False}  # already left out
    recipe.update(output_dir=str(root), name=run.root.name)
    run.recipe.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    write_jsonl(run.split("test"), _scored_rows(candidate))
    return run


def evaluate_holder_on_candidate_data(holder: VersionRecord, candidate: VersionRecord) -> VersionRecord:
    """The holder's record with metrics measured on the candidate's test set (and suite); its `eval`
    carries the candidate's test-set fingerprint when the examples were the same ones."""
    from tunekit.config import load_recipe
    from tunekit.eval import evaluate

    with tempfile.TemporaryDirectory(prefix="tunekit-reeval-") as tmp:
        run = _scratch_run(holder, candidate, Path(tmp))
        recipe = load_recipe(run.root, check_files=False)  # the holder's training files may be long gone
        result = evaluate(recipe, run)
        forgetting = forgetting_fingerprint(run, result.report, yaml.safe_load(run.recipe.read_text(encoding="utf-8")))
    facts = dict(candidate.eval or {})
    facts.update(forgetting_suite=forgetting, gates=[], evaluated_on=candidate.ref)
    if result.n_examples != ((candidate.eval or {}).get("test_set") or {}).get("n_examples"):
        facts["test_set"] = {**(facts.get("test_set") or {}), "n_examples": result.n_examples}
    return replace(holder, metrics=result.metrics, eval=facts)
