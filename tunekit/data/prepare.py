"""`tunekit data prepare`: read, validate, clean and split the recipe's data into the run directory.

Every input line ends up in exactly one place: a split file, the quarantine (with a reason), or
the `blank` count. The report proves it with an accounting check per file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunekit.config import Recipe
from tunekit.data.clean import DUPLICATE_REASONS, apply_length_policy, deduplicate, measure_tokens
from tunekit.data.formats import with_system_prompt
from tunekit.data.neardup import near_and_leak_stage
from tunekit.data.normalize import normalize_rows
from tunekit.data.html_report import report_outputs, write_html_report
from tunekit.data.report import build_report
from tunekit.data.split import attach_groups, split_train
from tunekit.data.analyze import UNLABELLED, Labeler, add_analysis, compile_rules
from tunekit.data.gates import evaluate_gates
from tunekit.data.pii import PII_REASON, scrub_examples
from tunekit.data.readers import check_input
from tunekit.data.validate import Example, InputFile, read_input
from tunekit.errors import DataError
from tunekit.runs import RunPaths, write_json, write_jsonl

INPUT_KEYS = ("train", "eval", "test")
SPLITS = ("train", "val", "test")
_SPLIT_OF_INPUT = {"eval": "val", "test": "test"}


def _source_names(paths: dict[str, Path]) -> dict[str, str]:
    """The file name identifies a row's source, unless two inputs share a name; then the full path."""
    names = Counter(p.name for p in paths.values())
    return {key: (p.name if names[p.name] == 1 else str(p)) for key, p in paths.items()}


def check_inputs(recipe: Recipe) -> None:
    """DataError naming the first data input that cannot be opened, before any model file is read."""
    for key in INPUT_KEYS:
        if (path := getattr(recipe.data, key)) is not None:
            check_input(key, path)


def _read_inputs(recipe: Recipe) -> list[InputFile]:
    paths = {key: getattr(recipe.data, key) for key in INPUT_KEYS if getattr(recipe.data, key) is not None}
    resolved: dict[Path, str] = {}
    for key, path in paths.items():
        if path.exists() and path.resolve() in resolved:
            other = resolved[path.resolve()]
            raise DataError(
                f"data.{key} and data.{other} are the same file ({path}); a held-out set must not be the training data",
                hint=f"remove data.{key} to hold out a share of train instead",
            )
        resolved[path.resolve()] = key
    names = _source_names(paths)
    return [read_input(key, path, names[key], recipe.data.format) for key, path in paths.items()]


def _clear_outputs(run: RunPaths) -> None:
    # A failed prepare must not leave an older run's splits behind for `tunekit train` to pick up.
    for path in (*(run.split(s) for s in SPLITS), run.quarantine, run.data_report, *report_outputs(run)):
        path.unlink(missing_ok=True)


def _write_quarantine(run: RunPaths, inputs: list[InputFile]) -> None:
    rows = [r.to_json() for f in inputs for r in sorted(f.rejected, key=lambda r: r.line)]
    write_jsonl(run.quarantine, rows)


def _file_of(inputs: list[InputFile]) -> dict[str, InputFile]:
    return {f.source: f for f in inputs}


def _clean(recipe: Recipe, inputs: list[InputFile], tokenizer, findings: dict | None = None) -> list[Example]:
    """Normalise, apply the system prompt, the length policy and dedup; rejected rows go back to
    their file. Report sections (normalization, near_dedup, leakage) are added to `findings`."""
    findings = {} if findings is None else findings
    by_source = _file_of(inputs)
    examples = [e for f in inputs for e in f.examples]
    # Before the system prompt is added: the recipe's prompt must stay byte-equal to the one used at eval.
    findings["normalization"] = normalize_rows(examples, recipe.data.clean)
    # Before the system prompt is added (the recipe's own prompt is not user data) and before
    # lengths and dedup, so they see the redacted text.
    examples, pii_rows, findings["pii"] = scrub_examples(examples, recipe.data.clean.pii, recipe.data.clean.pii_types)
    for example in examples:
        if example.kind != "text":  # raw pre-training text has no conversation to add a prompt to
            example.messages = with_system_prompt(example.messages, recipe.data.system_prompt)
    rejected = measure_tokens(examples, tokenizer)
    refused = {(r.source, r.line) for r in rejected}
    examples = [e for e in examples if (e.source, e.line) not in refused]
    examples, too_long = apply_length_policy(examples, recipe.data.max_length, recipe.data.over_length)
    exact_leaks: list = []
    examples, repeats = deduplicate(examples, recipe.data.dedup, recipe.data.remove_leaks, exact_leaks)
    read = lambda key, path, source: read_input(key, path, source, "auto")  # noqa: E731
    examples, near, sections = near_and_leak_stage(recipe.data, examples, exact_leaks, read)
    findings.update(sections)
    examples, semantic = _semantic_dedup(recipe, examples)
    for row in (*pii_rows, *rejected, *too_long, *repeats, *near, *semantic):
        by_source[row.source].rejected.append(row)
    return examples


def _no_training_rows(train: InputFile, run: RunPaths) -> DataError:
    reasons = Counter(r.reason for r in train.rejected)
    if train.lines == 0:
        return DataError(f"{train.path} is empty (data.train)", hint="point data.train at a JSONL file with one example per line")
    if train.blank == train.lines:
        return DataError(f"all {train.lines} lines of {train.source} are blank (data.train)")
    top, count = reasons.most_common(1)[0]
    non_blank = train.lines - train.blank
    return DataError(
        f"no training rows remain: all {non_blank} non-blank lines of {train.source} were quarantined; "
        f"see {run.quarantine}; top reason {top} ({count})",
        hint="fix the lines listed in the quarantine file (each has its line number, reason and original text)",
    )


# Rows set aside by a policy the user chose (dedup, over_length: drop), not by a defect.
_POLICY_REASONS = (*DUPLICATE_REASONS, "too_long", PII_REASON)


def _strict_failure(inputs: list[InputFile], run: RunPaths) -> DataError | None:
    bad = [(f, r) for f in inputs for r in sorted(f.rejected, key=lambda r: r.line) if r.reason not in _POLICY_REASONS]
    if not bad:
        return None
    shown = "\n".join(f"  {r.source}:{r.line}: {r.reason}: {r.detail}" for _, r in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    return DataError(
        f"{len(bad)} invalid line(s) in the data (all listed in {run.quarantine}):\n{shown}{more}",
        hint="fix these lines, or set `data.on_invalid: quarantine` to set them aside and train on the rest",
    )


def prepare_data(recipe: Recipe, run: RunPaths, tokenizer) -> dict:
    """Prepare the recipe's data into `run`'s data dir and return the report (also written as JSON).

    `tokenizer` measures each example under its chat template. With `data.on_invalid: error`
    (the default), any invalid line is an error; duplicates and over-length rows dropped by
    policy never are. Raises DataError for unusable input."""
    _clear_outputs(run)
    # A bad label regex or rule fails before any work is done.
    Labeler(recipe.data.analysis)
    compile_rules(recipe.data.analysis.rules)
    inputs = _read_inputs(recipe)
    if recipe.data.split == "grouped":
        attach_groups(inputs, recipe.data.group_key)
    findings: dict = {}
    try:
        examples = _clean(recipe, inputs, tokenizer, findings)
    except DataError:
        _write_quarantine(run, inputs)
        raise
    train_file = inputs[0]
    _write_quarantine(run, inputs)
    if not any(e.origin == "train" for e in examples):
        raise _no_training_rows(train_file, run)
    if recipe.data.on_invalid == "error" and (failure := _strict_failure(inputs, run)):
        raise failure

    splits = _assign_splits(recipe, examples)
    for name in SPLITS:
        if splits[name] or name != "test":
            write_jsonl(run.split(name), (e.to_json() for e in splits[name]))
    report = build_report(recipe, run, inputs, splits)
    report.update(findings)
    add_analysis(report, recipe.data.analysis, splits)
    _analyse_diversity(recipe, run, report, splits["train"])
    # Last: gates read every other section of the report.
    report["gates"] = evaluate_gates(recipe.data.gates, report)
    write_json(run.data_report, report)
    write_html_report(report, run)
    return report


def _assign_splits(recipe: Recipe, examples: list[Example]) -> dict[str, list[Example]]:
    """Given held-out files are used as they are; what is missing is held out from train."""
    data = recipe.data
    val_fraction = 0.0 if data.eval is not None else data.val_fraction
    test_fraction = 0.0 if data.test is not None else data.test_fraction
    train = [e for e in examples if e.origin == "train"]
    strata = groups = None
    if data.split == "stratified":
        labeler = Labeler(data.analysis)
        strata = [labeler(e) or UNLABELLED for e in train]
    elif data.split == "grouped":
        groups = [e.group for e in train]
    splits = split_train(train, val_fraction, test_fraction, data.seed, strata=strata, groups=groups)
    for origin, split in _SPLIT_OF_INPUT.items():
        splits[split] += [e for e in examples if e.origin == origin]
    return splits


def _semantic_dedup(recipe: Recipe, examples: list[Example]) -> tuple[list[Example], list]:
    clean = recipe.data.clean
    if not clean.semantic_dedup:
        return examples, []
    from tunekit.data.semantic import semantic_dedup  # the optional extra, only when asked for

    return semantic_dedup(examples, clean.semantic_threshold, across_files=recipe.data.remove_leaks)


def _analyse_diversity(recipe: Recipe, run: RunPaths, report: dict, train: list[Example]) -> None:
    analysis = recipe.data.analysis
    if not analysis.diversity:
        return
    from tunekit.data.diversity import analyse_diversity  # the optional extra, only when asked for

    diversity = analyse_diversity(train, analysis.diversity_clusters, recipe.data.seed, run.diversity_plot)
    report.setdefault("analysis", {})["diversity"] = diversity
