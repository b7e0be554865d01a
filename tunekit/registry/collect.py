"""What `register` reads from a run directory: everything a version needs to know about itself.

Only what the stages already wrote is read (manifest.json, recipe.yaml, eval/eval_report.json,
export/quant_report.json, data/test.jsonl); nothing is recomputed except digests. The recipe is
read as plain YAML, not validated again: its data files may be gone by the time it is registered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunekit.errors import RegistryError, RunDirError
from tunekit.models.trained import trained_artifact
from tunekit.runs import RunPaths, read_jsonl, sha256_file
from tunekit.train.manifest import model_fingerprint


@dataclass(frozen=True)
class RunFacts:
    """The facts of one run, as stored in a version's row."""

    kind: str
    artifact_dir: Path
    artifact_fingerprint: str | None  # in the manifest's own format, so a child's init_sha256 finds it
    base_model: dict | None
    data_hashes: dict | None
    recipe_sha256: str | None
    git: dict | None
    packages: dict | None
    metrics: dict | None
    verdict: str | None
    eval: dict | None
    quant_report: dict | None
    init_from: dict | None  # {"path", "sha256"} when the run continued from another run's artifact


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}", hint="re-run the stage that writes it") from None


def _read_recipe(run: RunPaths) -> dict:
    if not run.recipe.is_file():
        return {}
    try:
        data = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RunDirError(f"{run.recipe} is not valid YAML: {exc}") from None
    return data if isinstance(data, dict) else {}


def test_set_fingerprint(run: RunPaths, report: dict, recipe: dict) -> dict | None:
    """Which examples the eval scored: the test file's digest (from the report when it records one,
    else the run's data/test.jsonl now), the example cut and the counts."""
    settings = report.get("settings") or {}
    sha = settings.get("test_sha256")
    if sha is None and run.split("test").is_file():
        sha = sha256_file(run.split("test"))
    if sha is None:
        return None
    max_examples = (recipe.get("eval") or {}).get("max_examples")
    return {"sha256": sha, "max_examples": max_examples, "n_examples": report.get("n_examples"), "n_total": report.get("n_total")}


def forgetting_fingerprint(run: RunPaths, report: dict, recipe: dict) -> dict | None:
    """Which suite items the forgetting score came from: suite names, the item cap, and the scored item ids' digest."""
    if not report.get("forgetting"):
        return None
    cfg = (recipe.get("eval") or {}).get("forgetting") or {}
    path = run.forgetting_predictions
    ids = sorted(str(row["id"]) for row in read_jsonl(path) if not row.get("excluded")) if path.is_file() else None
    items_sha = hashlib.sha256("\n".join(ids).encode()).hexdigest() if ids is not None else None
    return {"suites": cfg.get("suites"), "max_items": cfg.get("max_items"), "items_sha256": items_sha}


def _eval_facts(run: RunPaths, recipe: dict) -> tuple[dict | None, str | None, dict | None]:
    report = _read_json(run.eval_report)
    if report is None:
        return None, None, None
    verdict = report.get("verdict") or {}
    passed = verdict.get("passed")
    facts = {
        "test_set": test_set_fingerprint(run, report, recipe),
        "forgetting_suite": forgetting_fingerprint(run, report, recipe),
        "gates": verdict.get("gates", []),
        "target": (report.get("settings") or {}).get("target"),
    }
    return report.get("metrics"), (None if passed is None else "PASS" if passed else "FAIL"), facts


def _init_from(manifest: dict, recipe: dict) -> dict | None:
    training = manifest.get("training") or {}
    path = training.get("init_from") or ((recipe.get("train") or {}).get("dpo") or {}).get("init_from")
    if not path:
        return None
    return {"path": str(path), "sha256": training.get("init_sha256")}


def collect(run: RunPaths) -> RunFacts:
    """The facts of `run` (a trained run directory); RegistryError when it is not one."""
    if not run.root.is_dir():
        raise RegistryError(f"run directory {run.root} not found", hint="give the folder `tunekit run` or `tunekit train` wrote")
    trained = trained_artifact(run)
    manifest = _read_json(run.manifest) or {}
    recipe = _read_recipe(run)
    metrics, verdict, eval_facts = _eval_facts(run, recipe)
    datasets = manifest.get("datasets")
    return RunFacts(
        kind=trained.kind,
        artifact_dir=trained.path,
        artifact_fingerprint=model_fingerprint(str(trained.path)).get("sha256"),
        base_model=manifest.get("base_model") or ({"name": recipe["base_model"]} if recipe.get("base_model") else None),
        data_hashes=datasets,
        recipe_sha256=sha256_file(run.recipe) if run.recipe.is_file() else None,
        git=manifest.get("git"),
        packages=manifest.get("packages"),
        metrics=metrics,
        verdict=verdict,
        eval=eval_facts,
        quant_report=_read_json(run.quant_report),
        init_from=_init_from(manifest, recipe),
    )
