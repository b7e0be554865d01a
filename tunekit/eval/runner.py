"""`tunekit eval`: generate answers for the test split with the tuned model (and the base) and score them.

The base model is loaded once. The tuned numbers come from base + the run's LoRA adapter; the
base numbers from the same object inside `disable_adapter()`, which skips the adapter layers
exactly, so both sides share one copy of the weights and one tokenizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.data.formats import with_system_prompt
from tunekit.errors import DataError
from tunekit.eval import metrics as M
from tunekit.eval.report import build_report, print_table
from tunekit.runs import RunPaths, read_jsonl, write_json, write_jsonl


def predictions_path(run: RunPaths) -> Path:
    """Per-example prompts, references, outputs and metric values of the last eval."""
    return run.eval_dir / "predictions.jsonl"


@dataclass
class Example:
    prompt: list[dict]  # the chat without its final assistant turn
    reference: str  # the final assistant turn
    meta: dict


@dataclass
class Generations:
    outputs: list[str]
    seconds: float
    new_tokens: int


def load_examples(run: RunPaths, recipe: Recipe) -> list[Example]:
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
        examples.append(Example(prompt=prompt, reference=messages[-1]["content"], meta=row.get("meta", {"line": number})))
    return examples


def load_tuned_model(recipe: Recipe, run: RunPaths):
    """(PeftModel of base + the run's adapter, tokenizer), in eval mode, on the GPU when there is one."""
    import torch
    from peft import PeftModel

    from tunekit.models import load_model, load_tokenizer, resolve_model

    adapter_dir = run.require(run.adapter_dir / "adapter_config.json", "train").parent
    base_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    # The adapter dir carries the tokenizer the model was trained with (chat template included).
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter_dir if has_tokenizer else base_path), trust_remote_code=recipe.trust_remote_code)
    base = load_model(base_path, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int, label: str) -> Generations:
    """Greedy completions for chat prompts, batched with left padding, in the prompts' order."""
    import torch

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    # Batch prompts of similar length together: less padding, same results (left padding + mask).
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(texts)
    new_tokens = 0
    with torch.inference_mode():
        _greedy(model, tokenizer, [texts[order[0]]], 2)  # warm-up, kept out of the timing
    started = time.perf_counter()
    with _progress(label, len(texts)) as advance, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            completions = _greedy(model, tokenizer, [texts[i] for i in batch], max_new_tokens)
            for row, index in enumerate(batch):
                tokens = _until_eos(completions[row].tolist(), tokenizer.eos_token_id)
                new_tokens += len(tokens)
                outputs[index] = tokenizer.decode(tokens, skip_special_tokens=True)
            advance(len(batch))
    return Generations(outputs=outputs, seconds=time.perf_counter() - started, new_tokens=new_tokens)


def _greedy(model, tokenizer, texts: list[str], max_new_tokens: int):
    """Token ids generated after each prompt (batch left-padded, so every row ends where generation starts)."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(model.device)
    generated = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return generated[:, enc["input_ids"].shape[1] :]


def _until_eos(tokens: list[int], eos_token_id: int) -> list[int]:
    # A finished row is padded (pad == eos for many chat models) while others keep generating.
    return tokens[: tokens.index(eos_token_id)] if eos_token_id in tokens else tokens


class _progress:
    """A rich progress bar with ETA on the shared console; yields a function that advances it."""

    def __init__(self, label: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task(label, total=total)

    def __enter__(self):
        self._bar.start()
        return lambda n: self._bar.advance(self._task, n)

    def __exit__(self, *exc):
        self._bar.stop()
        return False


def run_eval(recipe: Recipe, run: RunPaths) -> dict:
    """Score the tuned model (and the base, if `eval.compare_base`) on the test split; write the report."""
    run.require(run.adapter_dir / "adapter_config.json", "train")
    examples = load_examples(run, recipe)
    model, tokenizer = load_tuned_model(recipe, run)
    prompts = [e.prompt for e in examples]
    settings = dict(max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size)

    results = {"tuned": generate(model, tokenizer, prompts, label="tuned", **settings)}
    if recipe.eval.compare_base:
        with model.disable_adapter():
            results["base"] = generate(model, tokenizer, prompts, label="base", **settings)

    metrics = list(recipe.eval.metrics)
    references = [e.reference for e in examples]
    scored = {
        name: [M.score_example(out, ref, metrics) for out, ref in zip(gen.outputs, references)] for name, gen in results.items()
    }
    report = build_report(
        scored,
        {name: (gen.seconds, gen.new_tokens) for name, gen in results.items()},
        metrics=metrics,
        references=references,
        settings={
            **settings,
            "decoding": "greedy",
            "metrics": metrics,
            "base_model": recipe.base_model,
            "adapter_dir": str(run.adapter_dir),
            "test_file": str(run.split("test")),
        },
    )
    write_json(run.eval_report, report)
    write_jsonl(predictions_path(run), _prediction_rows(examples, results, scored))
    print_table(report)
    console.print(f"report: {run.eval_report}", soft_wrap=True)
    return report


def _prediction_rows(examples: list[Example], results: dict[str, Generations], scored: dict[str, list[dict]]):
    for i, example in enumerate(examples):
        row = {"meta": example.meta, "prompt": example.prompt, "reference": example.reference}
        for name in ("base", "tuned"):
            if name in results:
                row[f"{name}_output"] = results[name].outputs[i]
                row[f"{name}_metrics"] = scored[name][i]
        yield row
