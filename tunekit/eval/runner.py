"""`tunekit eval`: answer the test split with the tuned model (and the base), score, gate, report.

Steps: load the test examples and flag those seen in training (contamination); answer them with
each side; score every example; optionally run the forgetting suite and the LLM judge; evaluate
the recipe's gates; write eval_report.{json,html}, predictions.jsonl and verdict.json; exit 1 on
a failed gate. Every number in the report is recomputable from predictions.jsonl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.data.formats import with_system_prompt
from tunekit.errors import DataError
from tunekit.eval import forgetting, task
from tunekit.eval.gates import GateFailure
from tunekit.eval.gates import evaluate as evaluate_gates
from tunekit.eval.generation import Decoding, Generations
from tunekit.eval.report import build_report, print_report, write_html
from tunekit.eval.targets import ANSWER_ORDER, load_sides, require_trained, resolve_target
from tunekit.runs import RunPaths, read_jsonl, sha256_file, write_json, write_jsonl


@dataclass
class EvalExample:
    """One test-split chat, split into what the model is asked and the answer it is scored against."""

    prompt: list[dict]  # the chat without its final assistant turn
    reference: str  # the final assistant turn
    meta: dict


def load_examples(run: RunPaths, recipe: Recipe) -> list[EvalExample]:
    """The prepared test split, cut to `eval.max_examples`, as prompt/reference pairs."""
    path = run.require(run.split("test"), "data prepare")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(
            f"{path} holds no examples, so there is nothing to evaluate",
            hint="give a test file (data.test) or hold out part of train (data.test_fraction), then run `tunekit data prepare`",
        )
    if recipe.eval.max_examples:
        rows = rows[: recipe.eval.max_examples]
    examples = []
    for number, row in enumerate(rows, start=1):
        if "messages" not in row:
            kind = "preference" if "chosen" in row else "text"
            raise DataError(
                f"{path}, line {number}: the test split holds {kind} rows; eval compares chat answers",
                hint="give a chat-format test file (data.test) for this run",
            )
        messages = row["messages"]
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{path}, line {number}: the last message must be the assistant's answer to compare against")
        # Same rule as data preparation: the recipe's system prompt fills in where a chat has none.
        prompt = with_system_prompt(messages[:-1], recipe.data.system_prompt)
        examples.append(EvalExample(prompt=prompt, reference=messages[-1]["content"], meta=row.get("meta", {"line": number})))
    return examples


def _contamination(recipe: Recipe, run: RunPaths, examples: list[EvalExample]) -> list[dict | None]:
    cfg = recipe.eval.contamination
    if not cfg.enabled:
        return [None] * len(examples)
    from tunekit.eval.contamination import find_contamination, training_rows

    chats = [[*e.prompt, {"role": "assistant", "content": e.reference}] for e in examples]
    return find_contamination(chats, training_rows(run), near_threshold=cfg.near_threshold, clean=recipe.data.clean)


def _suite_contamination(recipe: Recipe, run: RunPaths, items: list[dict]) -> list[dict | None]:
    """Suite items whose question was trained on (e.g. through train.mix), compared on user turns."""
    cfg = recipe.eval.contamination
    if not cfg.enabled:
        return [None] * len(items)
    from tunekit.eval.contamination import find_contamination, training_rows, user_turns

    train = [(split, line, user_turns(messages)) for split, line, messages in training_rows(run)]
    questions = [user_turns(item["messages"]) for item in items]
    return find_contamination(questions, train, near_threshold=cfg.near_threshold, clean=recipe.data.clean)


@dataclass
class SuiteItems:
    """The forgetting-suite items to answer, and those left out as seen in training."""

    items: list[dict]
    flagged: list[tuple[dict, dict]]
    excluded: list[tuple[dict, dict]]
    decoding: Decoding


def _suite_items(recipe: Recipe, run: RunPaths) -> SuiteItems | None:
    cfg = recipe.eval.forgetting
    if not cfg.enabled:
        return None
    items = [item for name in cfg.suites for item in forgetting.load_suite(name)]
    # A question seen in training says nothing about forgetting: it is left out before sampling.
    flags = _suite_contamination(recipe, run, items)
    exclude = recipe.eval.contamination.exclude
    flagged = [(item, flag) for item, flag in zip(items, flags) if flag is not None]
    items = forgetting.select([item for item, flag in zip(items, flags) if flag is None or not exclude], cfg.max_items)
    decoding = Decoding(forgetting.DEFAULT_MAX_NEW_TOKENS, cfg.batch_size, recipe.eval.temperature, recipe.eval.seed)
    return SuiteItems(items, flagged, flagged if exclude else [], decoding)


def _forgetting(recipe: Recipe, suite: SuiteItems, answered: dict[str, tuple[list[str], list[str]]]) -> tuple[dict, list[dict]]:
    """The forgetting summary and rows from each side's (outputs, finish reasons) on the suite."""
    cfg, items = recipe.eval.forgetting, suite.items
    outputs = {name: outs for name, (outs, _) in answered.items()}
    correct = {name: [forgetting.score_item(o, item["check"]) for o, item in zip(outs, items)] for name, outs in outputs.items()}
    rows = [
        {"id": item["id"], "suite": item["suite"], "category": item["category"], "messages": item["messages"], "check": item["check"],
         **{f"{name}_output": outputs[name][i] for name in outputs}, **{f"{name}_right": correct[name][i] for name in correct}}
        for i, item in enumerate(items)
    ]
    rows += [{"id": item["id"], "suite": item["suite"], "category": item["category"], "messages": item["messages"],
              "check": item["check"], "contamination": flag, "excluded": True} for item, flag in suite.excluded]
    summary = forgetting.summarize(items, correct, warn=cfg.warn_drop, fail=cfg.fail_drop)
    summary["contaminated"] = {"n": len(suite.flagged), "excluded": bool(suite.excluded), "ids": [item["id"] for item, _ in suite.flagged]}
    # A suite answer cut at its budget is scored wrong: say how many were, per side.
    summary["truncated"] = {name: {"n": finish.count("length"), "of": len(finish)} for name, (_, finish) in answered.items()}
    for row, i in zip(rows, range(len(items))):
        row.update({f"{name}_finish_reason": answered[name][1][i] for name in answered})
    return summary, rows


def _judge(recipe: Recipe, run: RunPaths, examples, kept: list[int], outputs: dict[str, list[str]]):
    cfg = recipe.eval.judge
    if not cfg.enabled:
        return None, []
    from tunekit.eval import judge

    grader = judge.Judge(cfg, run.judge_cache)
    chosen = kept[: cfg.max_items] if cfg.max_items else kept
    prompts = [examples[i].prompt for i in chosen]
    references = [examples[i].reference for i in chosen]
    rubric = pairs = None
    if cfg.mode in ("rubric", "both"):
        rubric = {name: judge.rubric_scores(grader, prompts, references, [outs[i] for i in chosen]) for name, outs in outputs.items()}
    if cfg.mode in ("pairwise", "both") and "base" in outputs:
        pairs = judge.pairwise(grader, prompts, references, [outputs["tuned"][i] for i in chosen], [outputs["base"][i] for i in chosen])
    summary = {**judge.summarize(rubric, pairs), "n": len(chosen), "calls": grader.calls, "cache_hits": grader.cache_hits, "model": cfg.model}
    rows = [
        {"index": i, **({f"{n}_rubric": rubric[n][k] for n in rubric} if rubric else {}), **({"pairwise": pairs[k]} if pairs else {})}
        for k, i in enumerate(chosen)
    ]
    return summary, rows


@dataclass
class EvalResult:
    """What the eval stage produced; `report` is eval_report.json as written."""

    report_path: Path
    predictions_path: Path
    verdict_path: Path
    n_examples: int  # scored examples (contaminated ones left out when eval.contamination.exclude)
    metrics: dict[str, float | None]  # every number a gate can name: task.*, base.task.*, forgetting.*, judge.*
    passed: bool  # the eval gates verdict (True for a recipe without gates)
    report: dict = field(repr=False)
    skipped: str | None = None  # why there was nothing to evaluate (no test split), else None


def evaluate(recipe: Recipe, run: RunPaths) -> EvalResult:
    """Score the tuned model (and the base) on the test split; write report + verdict; GateFailure on FAIL.

    A run trained on preference pairs is scored on held-out pairs instead (test split, else
    validation); a run whose data has no test split has no task eval, which is said in one line."""
    require_trained(recipe, run)
    pairs = _pairs_split(run)
    if pairs is not None:
        return _evaluate_pairs(recipe, run, pairs)
    if not run.split("test").exists() and run.split("train").exists():
        reason = f"no test split in {run.data_dir} (give data.test or data.test_fraction to score the tuned model)"
        console.print(f"[yellow]eval skipped[/]: {reason}", soft_wrap=True)
        report = {"skipped": reason, "n_examples": 0, "metrics": {}}
        return EvalResult(run.eval_report, run.predictions, run.verdict, 0, {}, True, report, skipped=reason)
    return _evaluate_task(recipe, run)


def _pairs_split(run: RunPaths) -> Path | None:
    """The split of held-out preference pairs to score, when the run was trained on pairs."""
    train = run.split("train")
    if not train.exists():
        return None
    with open(train, encoding="utf-8") as handle:
        first = handle.readline()
    if '"chosen"' not in first or '"rejected"' not in first:
        return None
    for name in ("test", "val"):
        path = run.split(name)
        if path.exists() and path.stat().st_size > 0:
            return path
    raise DataError(
        f"{run.data_dir} holds no held-out preference pairs (no test or validation split) to score the tuned model on",
        hint="set data.val_fraction (e.g. 0.15) or data.test, then run `tunekit data prepare`",
    )


def _evaluate_pairs(recipe: Recipe, run: RunPaths, split: Path) -> EvalResult:
    from tunekit.eval import preference

    pairs = preference.load_pairs(split)
    sides = load_sides(recipe, run, need_base=True)
    summary, rows = preference.preference_metrics(sides, pairs, recipe.eval.batch_size)
    settings = {"split": str(split), "base_model": recipe.base_model, "target": resolve_target(recipe, run),
                "tuned_source": sides["tuned"].source}
    report = {"n_examples": len(pairs), "preference": summary, "settings": settings, "metrics": preference.flat(summary)}
    write_jsonl(run.preference_predictions, rows)
    return _gate_and_write(recipe, run, report, write_predictions=None)


def _evaluate_task(recipe: Recipe, run: RunPaths) -> EvalResult:
    cfg = recipe.eval
    examples = load_examples(run, recipe)
    flags = _contamination(recipe, run, examples)
    excluded = {i for i, flag in enumerate(flags) if flag is not None and cfg.contamination.exclude}
    kept = [i for i in range(len(examples)) if i not in excluded]

    sides = load_sides(recipe, run, need_base=cfg.compare_base or cfg.forgetting.enabled)
    spec = task.TaskSpec.from_recipe(recipe)
    longest = _longest_reference(sides, examples)
    budget = cfg.max_new_tokens or math.ceil(longest * 1.25) + 16
    decoding = Decoding(budget, cfg.batch_size, cfg.temperature, cfg.seed)
    suite = _suite_items(recipe, run)
    generations, scored, nll, suite_answers = _answer_and_score(recipe, sides, spec, decoding, examples, suite)
    forgetting_summary, forgetting_rows = _forgetting(recipe, suite, suite_answers) if suite is not None else (None, [])
    judge_summary, judge_rows = _judge(recipe, run, examples, kept, {n: g.outputs for n, g in generations.items()})

    report = build_report(
        scored, generations, nll, spec=spec, kept=kept, examples=examples, flags=flags,
        forgetting=forgetting_summary, judge=judge_summary,
        settings={
            "max_new_tokens": budget, "max_new_tokens_from": "eval.max_new_tokens" if cfg.max_new_tokens else "references",
            "reference_tokens_max": longest, "batch_size": cfg.batch_size, "decoding": decoding.name,
            "metrics": list(spec.metrics), "base_model": recipe.base_model, "target": resolve_target(recipe, run),
            "tuned_source": sides["tuned"].source, "test_file": str(run.split("test")),
            "test_sha256": sha256_file(run.split("test")),  # what a registry compares before comparing scores
            "label_field": spec.label_field, "label_regex": spec.label_regex,
            "answers_from_cache": {name: side.answered_from_cache for name, side in sides.items() if side.answered_from_cache},
        },
    )
    if forgetting_rows:
        write_jsonl(run.forgetting_predictions, forgetting_rows)
    if judge_rows:
        write_jsonl(run.judge_rows, judge_rows)
    return _gate_and_write(recipe, run, report, write_predictions=lambda: list(_prediction_rows(examples, generations, scored, flags, excluded, nll)))


def _gate_and_write(recipe: Recipe, run: RunPaths, report: dict, write_predictions) -> EvalResult:
    """Apply the gates to the report's numbers, write report, verdict and predictions, print, and
    raise GateFailure when a gate failed."""
    metrics = report["metrics"]
    verdict = evaluate_gates(list(recipe.eval.gates), metrics)
    report["verdict"] = verdict
    write_json(run.eval_report, report)
    write_json(run.verdict, {**verdict, "run": str(run.root), "report": str(run.eval_report)})
    if write_predictions is not None:
        prediction_rows = write_predictions()
        write_jsonl(run.predictions, prediction_rows)
        write_html(report, run.eval_html, prediction_rows)
    print_report(report)
    console.print(f"report: {run.eval_report}; verdict: {run.verdict}", soft_wrap=True)
    if not verdict["passed"]:
        raise GateFailure(
            f"{verdict['n_failed']} of {len(verdict['gates'])} eval gate(s) failed; verdict written to {run.verdict}",
            hint="see the gate table above; the model should not be promoted (later stages of `tunekit run` are skipped)",
        )
    return EvalResult(
        report_path=run.eval_report, predictions_path=run.predictions, verdict_path=run.verdict,
        n_examples=report["n_examples"], metrics=metrics, passed=verdict["passed"], report=report,
    )


def _longest_reference(sides: dict, examples: list[EvalExample]) -> int:
    """Tokens of the longest reference answer (its end of turn included), by a local side's tokenizer;
    an endpoint-only eval counts one token per two characters, which overestimates for safety."""
    tokenizer = next((side.tokenizer for side in sides.values() if side.tokenizer is not None), None)
    if tokenizer is None:
        return max((len(e.reference) // 2 + 1 for e in examples), default=0)
    lengths = tokenizer([e.reference for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    return max((len(ids) + 1 for ids in lengths), default=0)


def _answer_and_score(recipe: Recipe, sides: dict, spec, decoding: Decoding, examples: list[EvalExample], suite: SuiteItems | None):
    """Each compared side answers every example (and the suite's items), one side after the other in
    ANSWER_ORDER; every answer is scored (and its reference NLL taken)."""
    cfg = recipe.eval
    prompts = [e.prompt for e in examples]
    references = [e.reference for e in examples]
    generations: dict[str, Generations] = {}
    nll, suite_answers = {}, {}
    for name in [n for n in ANSWER_ORDER if n in sides]:
        side = sides[name]
        if name == "tuned" or cfg.compare_base:
            if "perplexity" in spec.metrics and side.local:
                nll[name] = side.nll(prompts, references, cfg.batch_size)
            generations[name] = side.answer(prompts, decoding, name)
        if suite is not None:
            suite_answers[name] = forgetting.answer_items(side.answer, suite.items, suite.decoding, f"forgetting {name}")
    for side in sides.values():
        if side.answered_from_cache:
            console.print(
                f"{side.name} answers reused from the answer cache: {side.answered_from_cache} of {side.answered} prompts "
                "(same model files, prompts, decoding and machine; eval.cache_base_answers: false to recompute)", soft_wrap=True,
            )
    # The report lists the tuned side first.
    generations = {name: generations[name] for name in ("tuned", "base") if name in generations}
    suite_answers = {name: suite_answers[name] for name in ("tuned", "base") if name in suite_answers}
    scored = {name: [task.score(out, ref, spec) for out, ref in zip(gen.outputs, references)] for name, gen in generations.items()}
    return generations, scored, nll, suite_answers


def _prediction_rows(examples, generations, scored, flags, excluded, nll):
    for i, example in enumerate(examples):
        row = {"index": i, "meta": example.meta, "prompt": example.prompt, "reference": example.reference,
               "contamination": flags[i], "excluded": i in excluded}
        for name, gen in generations.items():
            row[f"{name}_output"] = gen.outputs[i]
            row[f"{name}_metrics"] = scored[name][i]
            row[f"{name}_latency_s"] = gen.latency_s[i]  # unrounded: the report recounts exactly from it
            row[f"{name}_tokens"] = gen.lengths[i]
            row[f"{name}_finish_reason"] = gen.finish[i]
            if name in nll:
                row[f"{name}_nll"] = list(nll[name][i])
        yield row
