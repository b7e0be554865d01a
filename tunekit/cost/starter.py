"""Starter recipes for the fine-tune answers of `tunekit advise`: valid recipes to edit, not to trust blindly."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tunekit.errors import TunekitError

METRICS_BY_TASK = {
    "classification": ["exact_match", "normalized_match"],
    "extraction": ["json_valid", "field_accuracy", "exact_match"],
    "structured_output": ["json_valid", "field_accuracy", "exact_match"],
    "code": ["exact_match"],
}
DEFAULT_METRICS = ["rouge_l"]


def _epochs(examples: int) -> int:
    # Small sets need more passes; past a few thousand examples one pass avoids memorising them.
    return 3 if examples < 1000 else 2 if examples < 5000 else 1


def _relative(target: Path, recipe_dir: Path) -> str:
    return os.path.relpath(Path(target).resolve(), recipe_dir.resolve())


def _header(advice, title: str) -> str:
    lines = [f"# {title}", f"# Written by `tunekit advise`: {advice.summary}.", "# Why:"]
    lines += [f"#   - {f.text}" for f in advice.findings]
    lines += ["# Plan:"] + [f"#   {i}. {step}" for i, step in enumerate(advice.steps, 1)]
    return "\n".join(lines) + "\n"


def _sft(situation, advice, name: str, train: str) -> dict:
    return {
        "name": name,
        "base_model": situation.base_model,
        "output_dir": "runs",
        "data": {"train": train, "val_fraction": 0.1, "max_length": 1024},
        "train": {
            "method": "sft",
            "adapter": advice.adapter,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
            "epochs": _epochs(situation.labelled_examples),
            "learning_rate": 2.0e-4,
            "batch_size": 8,
        },
        "eval": {"metrics": METRICS_BY_TASK.get(situation.task, DEFAULT_METRICS), "compare_base": True},
    }


def _write_all(planned: list[tuple[Path, str, dict]], overwrite: bool) -> list[Path]:
    # Check every target first: a refusal must not leave half of a plan written.
    existing = [str(path) for path, _, _ in planned if path.exists()]
    if existing and not overwrite:
        raise TunekitError(f"--recipe-out: {', '.join(existing)} exists", hint="pass another --recipe-out, or --force to overwrite")
    for path, header, recipe in planned:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        except OSError as exc:
            raise TunekitError(f"{path}: cannot write the starter recipe: {exc.strerror}", hint="pass a writable path to --recipe-out") from None
    return [path for path, _, _ in planned]


def write_starter_recipes(situation, advice, out: Path, data_path: Path | None, overwrite: bool = False) -> list[Path]:
    """The SFT recipe at `out`; `<stem>.cpt.yaml` and `<stem>.dpo.yaml` next to it when those steps are advised."""
    out = Path(out)
    name = out.stem
    train = _relative(data_path, out.parent) if data_path is not None else "data/train.jsonl"
    points = {f.points_to for f in advice.findings}
    sft_header = _header(advice, f"Starter recipe: supervised fine-tuning ({advice.adapter}) for {situation.task}")
    if "cpt" in points:
        sft_header += f"# After the CPT run ({name}-cpt) and `tunekit export` (merged), set base_model to runs/{name}-cpt/export/merged.\n"
    if "base_model" not in situation.model_fields_set and any(f.rule.startswith("memory") for f in advice.findings):
        sft_header += (
            f"# base_model is tunekit's embedded default, so this recipe runs as it is; the memory advice is for a base of "
            f"{situation.base_params_b:g}B parameters: set base_model to it.\n"
        )
    if data_path is None:
        sft_header += "# data.train: put your labelled chat examples (JSONL, one conversation per line) there.\n"
    planned = [(out, sft_header, _sft(situation, advice, name, train))]
    if "cpt" in points:
        cpt = {
            "name": f"{name}-cpt",
            "base_model": situation.base_model,
            "output_dir": "runs",
            "data": {"train": "data/domain_text.jsonl", "format": "text", "val_fraction": 0.05, "max_length": 1024},
            "train": {"method": "cpt", "adapter": advice.adapter, "lora": {"r": 64, "alpha": 128}, "epochs": 1, "learning_rate": 1.0e-4},
            "eval": {"metrics": ["perplexity"], "compare_base": True},
        }
        header = _header(advice, "Starter recipe: continued pre-training on in-domain text (before the SFT recipe)")
        planned.append((out.with_name(f"{name}.cpt.yaml"), header + "# data.train: one {\"text\": ...} row per document.\n", cpt))
    if "dpo" in points:
        dpo = {
            "name": f"{name}-dpo",
            "base_model": situation.base_model,
            "output_dir": "runs",
            "data": {"train": "data/preferences.jsonl", "format": "preference", "val_fraction": 0.1, "max_length": 1024},
            "train": {"method": "dpo", "adapter": advice.adapter, "dpo": {"beta": 0.1, "init_from": f"runs/{name}"},
                      "epochs": 1, "learning_rate": 2.0e-5},  # fmt: skip
            "eval": {"metrics": METRICS_BY_TASK.get(situation.task, DEFAULT_METRICS), "compare_base": True},
        }
        header = _header(advice, "Starter recipe: DPO on preference pairs, starting from the SFT run")
        planned.append((out.with_name(f"{name}.dpo.yaml"), header + "# data.train: prompt/chosen/rejected rows.\n", dpo))
    return _write_all(planned, overwrite)
