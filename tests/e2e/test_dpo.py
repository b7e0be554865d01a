"""DPO on the real embedded SmolLM2-135M with the shipped preference example, shortened to a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cli_helpers import tunekit

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "preference_pairs" / "recipe.yaml"


@pytest.mark.slow
def test_dpo_raises_the_chosen_vs_rejected_reward_margin(tmp_path, embedded_model_dir):
    common = ("--set", f"output_dir={tmp_path}")
    prepared = tunekit("data", "prepare", str(RECIPE), *common)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    trained = tunekit(
        "train", str(RECIPE), *common,
        "--set", "train.max_steps=4", "--set", "train.batch_size=2", "--set", "train.eval_steps=4",
        timeout=1800,  # about a minute alone on 2 cores; a shared CI box can take many times that
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "preference-pairs"

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in rows if "rewards/margins" in r]
    assert len(margins) == 4
    # Step 1 is scored before any update, where the policy is the reference: margin 0.
    assert margins[0] == pytest.approx(0.0, abs=1e-4)
    assert sum(margins[-2:]) / 2 > 0.2
    # On held-out pairs, the tuned model prefers the chosen answers more than the base does.
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["result"]["eval_rewards/margins"] > 0.2
    assert manifest["result"]["eval_rewards/accuracies"] >= 0.8
    assert manifest["method"] == "dpo" and manifest["training"]["reference"] == "the base model (adapter disabled)"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
