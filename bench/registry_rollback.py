"""Rollback time: from `tunekit registry rollback NAME` to the server answering with the previous version.

Two versions of an adapter of the embedded SmolLM2 (LoRA r16 on every linear layer, like the
example's) are registered; version 2 holds `production`; `tunekit serve NAME@production` runs as its
own process while a client keeps asking. The clock starts when the rollback command starts and
stops at the first answer whose `x-tunekit-model-version` header says version 1. Writes
bench/results/registry_rollback.json.

    .venv/bin/python bench/registry_rollback.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "triage"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_dir(root: Path, name: str, seed: int) -> Path:
    """A trained-run layout around a random (non-zero) LoRA of the embedded base."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.models import resolve_model

    base = resolve_model("smollm2-135m-instruct")
    run = root / name
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "adapter")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "base_model": "smollm2-135m-instruct",
                                                     "data": {"train": "data/train.jsonl"}}))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                      {"role": "assistant", "content": "a"}]}) + "\n")
    return run


def _ask(client: httpx.Client, url: str) -> str | None:
    body = {"model": f"{MODEL}@production", "messages": [{"role": "user", "content": "My parcel is late"}], "max_tokens": 4,
            "temperature": 0}
    response = client.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    response.raise_for_status()
    return response.headers.get("x-tunekit-model-version")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "registry_rollback.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunekit-rollback-"))
    home = work / "home"
    home.mkdir()
    cached = Path(os.environ.get("TUNEKIT_HOME") or Path.home() / ".cache" / "tunekit") / "models"
    if cached.is_dir():  # reuse the converted embedded model; the registry itself starts empty
        (home / "models").symlink_to(cached)
    env = {**os.environ, "TUNEKIT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    tunekit = [sys.executable, "-m", "tunekit"]
    for seed in (1, 2):
        run = _run_dir(work / "runs", f"{MODEL}-{seed}", seed)
        subprocess.run([*tunekit, "registry", "register", str(run), "--name", MODEL], env=env, check=True, capture_output=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*tunekit, "serve", f"{MODEL}@production", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = []
    try:
        promote = [*tunekit, "registry", "promote"]
        subprocess.run([*promote, f"{MODEL}@1", "--to", "production", "--force", "--reason", "bench"], env=env, check=True,
                       capture_output=True)
        with httpx.Client() as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if _ask(client, url) == "1":
                        break
                except httpx.HTTPError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                    time.sleep(0.5)
            for _ in range(args.repeats):
                subprocess.run([*promote, f"{MODEL}@2", "--to", "production", "--force", "--reason", "bench"], env=env,
                               check=True, capture_output=True)
                while _ask(client, url) != "2":
                    time.sleep(0.05)
                started = time.perf_counter()
                command = subprocess.run([*tunekit, "registry", "rollback", MODEL], env=env, capture_output=True, text=True)
                command_s = time.perf_counter() - started
                assert command.returncode == 0, command.stderr
                answered = 0
                while _ask(client, url) != "1":
                    answered += 1
                total_s = time.perf_counter() - started
                results.append({"rollback_to_answer_s": round(total_s, 3), "command_s": round(command_s, 3),
                                "answers_on_v2_after_command": answered})
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    worst = max(r["rollback_to_answer_s"] for r in results)
    summary = {
        "workload": "registry rollback while serving NAME@production (embedded SmolLM2 + LoRA r16 all-linear)",
        "rollback_to_answer_s": results, "worst_s": worst, "target_s": 5.0, "met": worst < 5.0,
        "note": "command_s is the `tunekit registry rollback` process (Python start-up included); the rest is the "
                "server noticing the change (0.5 s polling), loading the adapter and answering with it",
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
