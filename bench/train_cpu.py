"""CPU training speed and memory of the shipped example: tunekit against plain TRL + PEFT.

Prepares examples/ticket_triage once (the same rows tunekit trains on, general data mixed in,
tokenized with the assistant-only mask), then trains for `--steps` optimizer steps, each
measurement in its own fresh process so that peak memory does not mix:

- `baseline`: plain TRL `SFTTrainer` + PEFT as a user would write it (TRL's SFTConfig defaults,
  which include gradient checkpointing), on the same tokenized rows, same LoRA, batch, max_length,
  learning rate and schedule;
- `tunekit`: `tunekit.train.train` on the recipe, exactly as `tunekit train` runs it.

Each child reports tokens/s (all non-padding tokens, and trained = assistant tokens), s/step
(median over the steps after the first, which carries warm-up), the per-step losses, and its
resident memory after each phase and at its peak (VmHWM). One JSON object per measurement goes
to bench/results/train_cpu.json with hardware, settings, the same-run baseline and the ratio.
A figure, not a test: nothing is asserted.

    python bench/train_cpu.py                          # baseline + tunekit, 15 steps
    python bench/train_cpu.py --steps 6 --variants tunekit --set train.gradient_checkpointing=true
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train_cpu.json"
RECIPE = ROOT / "examples" / "ticket_triage" / "recipe.yaml"


# ------------------------------------------------------------------ measuring inside a child


def proc_status_mb() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS"), "peak_rss_mb": fields.get("VmHWM")}


def probe_callback(phases: dict, steps: list, counts: list):
    """A TrainerCallback timing every optimizer step and recording memory at phase boundaries."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            phases["trainer_built"] = proc_status_mb()

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(time.perf_counter() - self._t0)
            if state.global_step == 1:
                phases["after_step_1"] = proc_status_mb()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                counts.append({"step": state.global_step, "loss": float(logs["loss"])})

    return Probe()


def count_tokens(trainer, tokens: list) -> None:
    """Wrap the trainer's compute_loss to count, per micro-batch, real tokens, trained tokens and
    the padded size (the same wrapper on both trainers, so the counts mean the same)."""
    original = trainer.compute_loss

    def counted(model, inputs, *args, **kwargs):
        if not model.training:  # the closing validation is not training
            return original(model, inputs, *args, **kwargs)
        labels = inputs["labels"]
        real = inputs["attention_mask"].sum() if "attention_mask" in inputs else labels.numel()
        tokens.append({"real": int(real), "trained": int((labels[:, 1:] != -100).sum()), "padded": labels.numel()})
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = counted


def summarize(steps: list[float], tokens: list[dict], losses: list[dict], phases: dict) -> dict:
    timed = steps[1:] or steps  # the first step carries warm-up (allocations, thread pools)
    micro = len(tokens) // max(len(steps), 1)
    later = tokens[micro:] or tokens
    seconds = sum(timed)
    return {
        "steps": len(steps),
        "s_per_step_median": round(statistics.median(timed), 3),
        "s_per_step_mean": round(statistics.fmean(timed), 3),
        "tokens_per_s": round(sum(t["real"] for t in later) / seconds, 1),
        "trained_tokens_per_s": round(sum(t["trained"] for t in later) / seconds, 1),
        "padded_tokens_per_step": round(statistics.fmean(t["padded"] for t in tokens) * micro, 1),
        "real_tokens_per_step": round(statistics.fmean(t["real"] for t in tokens) * micro, 1),
        "trained_tokens_per_step": round(statistics.fmean(t["trained"] for t in tokens) * micro, 1),
        "losses": losses,
        "final_loss": losses[-1]["loss"] if losses else None,
        "memory_mb": {**phases, "end": proc_status_mb()},
        "peak_rss_mb": proc_status_mb()["peak_rss_mb"],
    }


def child_tunekit(job: dict) -> dict:
    from tunekit.config import load_recipe
    from tunekit.runs import RunPaths
    from tunekit.train import runner

    phases = {"imported": proc_status_mb()}
    steps, tokens, losses = [], [], []
    recipe = load_recipe(RECIPE, job["overrides"])
    run = RunPaths(recipe.run_dir)
    probe = probe_callback(phases, steps, losses)
    original_build = runner.BUILDERS["sft"]

    details = {}

    def build(recipe, run, callbacks=None):
        built = original_build(recipe, run, callbacks)
        count_tokens(built.trainer, tokens)
        details.update({k: built.details[k] for k in ("cpu_micro_batch", "cpu_padding_free") if k in built.details})
        return built

    runner.BUILDERS["sft"] = build
    runner.train(recipe, run, show_progress=False, callbacks=[probe])
    return {**summarize(steps, tokens, losses, phases), **details}


def child_baseline(job: dict) -> dict:
    """Plain TRL + PEFT: the model as transformers loads it, SFTConfig's defaults, the same rows."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    phases = {"imported": proc_status_mb()}
    steps, tokens, losses = [], [], []
    rows = [json.loads(line) for line in Path(job["rows"]).read_text().splitlines()]
    s = job["settings"]
    tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
    model = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=torch.float32)
    phases["model_loaded"] = proc_status_mb()
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=job["output_dir"], max_steps=job["steps"], per_device_train_batch_size=s["batch_size"],
        max_length=s["max_length"], learning_rate=s["learning_rate"], lr_scheduler_type=s["lr_scheduler"],
        warmup_steps=s["warmup_ratio"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, seed=s["seed"], data_seed=s["seed"], disable_tqdm=True,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)
    trainer.add_callback(probe_callback(phases, steps, losses))
    count_tokens(trainer, tokens)
    trainer.train()
    return {**summarize(steps, tokens, losses, phases), "gradient_checkpointing": args.gradient_checkpointing}


# ------------------------------------------------------------------ the parent


def prepare(tmp: Path, overrides: list[str]) -> dict:
    """Prepare the example once; write the exact tokenized train rows for the baseline."""
    from tunekit.config import load_recipe
    from tunekit.data.stage import prepare as prepare_stage
    from tunekit.models import resolve_model
    from tunekit.runs import RunPaths
    from tunekit.train.common import load_splits
    from tunekit.train.modeling import training_tokenizer
    from tunekit.train.sft import tokenize_split

    recipe = load_recipe(RECIPE, overrides)
    run = RunPaths(recipe.run_dir)
    prepare_stage(recipe, run)
    model_path = resolve_model(recipe.base_model)
    tokenizer, _ = training_tokenizer(recipe, model_path)
    train_rows, _, _ = load_splits(recipe, run, tokenizer)
    dataset = tokenize_split(tokenizer, train_rows, recipe.data.max_length, "train")
    rows_file = tmp / "baseline_rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in dataset.to_list()))
    t = recipe.train
    settings = {
        "batch_size": t.batch_size, "max_length": recipe.data.max_length, "learning_rate": t.learning_rate,
        "lr_scheduler": t.lr_scheduler, "warmup_ratio": t.warmup_ratio, "seed": t.seed, "lora_r": t.lora.r,
        "lora_alpha": t.lora.alpha, "lora_dropout": t.lora.dropout, "train_rows": len(train_rows),
    }  # fmt: skip
    return {"model_path": model_path, "rows": str(rows_file), "settings": settings}


def run_child(job: dict, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(job_file), str(out_file)], env=env, timeout=timeout,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0 or not out_file.exists():
            print("\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:]), file=sys.stderr)
            return {"error": f"exit {proc.returncode}"}
        return {**json.loads(out_file.read_text()), "process_wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--variants", default="baseline,tunekit",
                        help="comma-separated: baseline, tunekit, or tunekit+key=value+... (an A/B in the same run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="tunekit recipe override key=value")
    parser.add_argument("--label", default="", help="what this tunekit measurement changes, for the record")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(Path(args.child[0]).read_text())
        result = child_baseline(job) if job["variant"] == "baseline" else child_tunekit(job)
        Path(args.child[1]).write_text(json.dumps(result))
        return
    from tunekit.cli.main import _quiet_libraries
    from tunekit.train.manifest import hardware, package_versions

    _quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="tunekit-bench-") as tmp:
        common = [f"output_dir={tmp}", f"train.max_steps={args.steps}", "train.logging_steps=1"]
        shared = prepare(Path(tmp), common)
        results = {}
        for index, variant in enumerate(args.variants.split(",")):
            kind, *own = variant.split("+")
            job = {**shared, "variant": kind, "steps": args.steps, "output_dir": f"{tmp}/out-{index}",
                   "overrides": [*common, *(args.overrides + own if kind == "tunekit" else [])]}  # fmt: skip
            results[variant] = run_child(job, args.timeout)
            print(f"{variant}: " + json.dumps({k: v for k, v in results[variant].items() if k not in ("losses", "memory_mb")}))
    write_results(args, shared["settings"], results, hardware(), package_versions())


def write_results(args, settings: dict, results: dict, hw: dict, packages: dict) -> None:
    base = results.get("baseline", {})
    records = []
    for variant, result in results.items():
        kind, *own = variant.split("+")
        record = {
            "workload": "examples/ticket_triage train, smollm2-135m-instruct LoRA r16 all-linear, CPU",
            "variant": variant, "label": args.label if kind == "tunekit" else "plain TRL SFTTrainer + PEFT (SFTConfig defaults)",
            "overrides": args.overrides + own if kind == "tunekit" else [], "settings": {**settings, "steps": args.steps},
            **result, "hardware": hw, "packages": packages, "date": time.strftime("%Y-%m-%d %H:%M"),
        }  # fmt: skip
        if variant != "baseline" and "tokens_per_s" in base and "tokens_per_s" in result:
            record["baseline_tokens_per_s"] = base["tokens_per_s"]
            record["baseline_peak_rss_mb"] = base["peak_rss_mb"]
            record["ratio_vs_baseline"] = round(result["tokens_per_s"] / base["tokens_per_s"], 3)
            record["memory_ratio_vs_baseline"] = round(result["peak_rss_mb"] / base["peak_rss_mb"], 3)
        records.append(record)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps([*existing, *records], indent=1) + "\n")
    for r in records:
        print(f"{r['variant']:40s} {r.get('tokens_per_s')} tok/s  {r.get('s_per_step_median')} s/step  "
              f"peak {r.get('peak_rss_mb')} MB  loss {r.get('final_loss')}  ratio {r.get('ratio_vs_baseline', '-')}")  # fmt: skip


if __name__ == "__main__":
    main()
