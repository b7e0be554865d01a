"""`tunekit train` under `accelerate launch` with 2 CPU processes (DDP over gloo), unchanged.

On a machine without GPUs `accelerate launch --multi_gpu --num_processes N` starts N ranks through
torchrun; the trainer runs on CPU (use_cpu) and accelerate then picks the gloo backend.
(`--cpu --num_processes N` would start a single process unless MPI is configured.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.e2e.run_helpers import tunekit_env, write_prepared_run

STEPS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_train_and_only_rank_0_writes(tmp_path, tiny_model_dir):
    recipe, run = write_prepared_run(tmp_path, tiny_model_dir, "ddp", max_steps=STEPS, save_steps=3, batch_size=2)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "tunekit", "train", str(recipe),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=tunekit_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]  # the launcher fails if either rank fails

    # Two ranks took part: each saved its own RNG state, and every step saw both ranks' tokens.
    checkpoint = run.checkpoints_dir / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # 20 rows / (2 ranks x batch 2) = 5 steps per epoch
    assert state["global_step"] == STEPS and state["epoch"] == pytest.approx(STEPS / 5)

    # Only rank 0 wrote: one metrics line per logged step, one "trained" summary, one progress line each.
    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, STEPS + 1))
    assert result.stderr.count("trained sft") == 1 and result.stderr.count(f"step {STEPS}/{STEPS}") == 1
    manifest = json.loads(run.manifest.read_text())
    assert manifest["result"]["steps"] == STEPS

    # The saved adapter loads with PEFT on the base model and is the trained one.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run.adapter_dir)
    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    loaded = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys() and len(saved) == 2 * 7 * 2
    assert all((loaded[k].detach() == saved[k]).all() for k in saved)
    assert any(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)  # B starts at zero: it trained
