"""Fake run directories for the registry tests: small real files where a trained run has its own."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def fake_run(root: Path, name: str, *, field_accuracy: float = 0.80, overall_drop: float | None = 0.01, passed: bool | None = True,
             test_rows: int = 10, weights: bytes | None = None, init_from: str | None = None, init_sha256: str | None = None,
             export: bool = True) -> Path:
    """A run directory laid out as tunekit writes one: adapter/, recipe, manifest, data/test.jsonl, eval/, export/."""
    run = root / name
    _write(run / "adapter" / "adapter_config.json", {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "tiny"})
    _write(run / "adapter" / "adapter_model.safetensors", weights if weights is not None else (name.encode() * 64))
    _write(run / "adapter" / "tokenizer_config.json", {"chat_template": "{{ messages }}"})
    recipe = {"name": name, "base_model": "tiny", "eval": {"max_examples": None, "forgetting": {"suites": ["general"], "max_items": 5}}}
    if init_from:
        recipe["train"] = {"method": "dpo", "dpo": {"init_from": init_from}}
    _write(run / "recipe.yaml", yaml.safe_dump(recipe))
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f'{{"a": {i}}}'}]} for i in range(test_rows)]
    test = _write(run / "data" / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write(run / "manifest.json", {
        "run": name, "base_model": {"name": "tiny", "id": "tiny"},
        "datasets": {"prepared": {"test": {"path": str(test), "sha256": "x"}}, "sources": {}},
        "git": {"commit": "abc123", "dirty": False}, "packages": {"tunekit": "0.1.0"},
        "training": {"init_from": init_from, "init_sha256": init_sha256} if init_from else {},
    })
    if passed is not None:
        metrics = {"task.field_accuracy": field_accuracy, "task.json_valid": 1.0}
        report = {"n_examples": test_rows, "n_total": test_rows, "settings": {}, "verdict": {"passed": passed, "gates": []}}
        if overall_drop is not None:
            metrics.update({"forgetting.overall": 0.5 - overall_drop, "forgetting.overall_drop": overall_drop})
            report["forgetting"] = {"overall": {"tuned": 0.5 - overall_drop, "base": 0.5, "drop": overall_drop}, "categories": {}}
            _write(run / "eval" / "forgetting_predictions.jsonl", "".join(json.dumps({"id": f"general-{i}"}) + "\n" for i in range(5)))
        _write(run / "eval" / "eval_report.json", {**report, "metrics": metrics})
    if export:
        _write(run / "export" / "model-f16.gguf", b"GGUF" + name.encode() * 32)
        _write(run / "export" / "quant_report.json", {"types": {"F16": {"ppl_ratio": 1.0}}})
    return run
