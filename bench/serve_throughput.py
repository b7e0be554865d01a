"""Serving throughput on the embedded model: one client sending requests one by one against 8
concurrent clients, same server, same requests; p50/p95 latency and time to first token.
hf backend: then three adapters of the base (resident memory, interleaved requests against one adapter).
llamacpp backend: the embedded GGUF file itself (Q4_1), or --gguf FILE (e.g. an F16 export);
`--backend both` measures hf then llamacpp and reports llamacpp's requests/s ratio to hf's.

    .venv/bin/python bench/serve_throughput.py [--backend hf|llamacpp|both] [--gguf FILE] [--requests 24] [--max-tokens 24]

Prints a JSON report. A benchmark, not a test: it reports figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import uvicorn

from tunekit.serve import Engine, create_app

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about rain.", "List three fruits.", "What is 2+2?",
    "Say hello in Spanish.", "Name a color.", "What is Python?", "Count to five.",
]


@contextmanager
def serving(engine: Engine):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, max_new_tokens_limit=256), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def one(client, model: str, question: str, max_tokens: int) -> tuple[float, float]:
    """(latency, time to first token) of one streamed greedy request."""
    started = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens, stream=True
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return time.perf_counter() - started, first or 0.0


def measure(url: str, models: list[str], requests: int, clients: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    jobs = [(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)]) for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda job: one(client, job[0], job[1], max_tokens), jobs))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    ttfts = sorted(r[1] for r in results)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return {
        "clients": clients, "requests": requests, "errors": 0, "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 3), "latency_p95_s": round(p95, 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
    }


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def adapters_of(engine: Engine, root: Path, count: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(engine.base_source.path),
                               LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        model.save_pretrained(root / f"a{i}")
        names.append(f"a{i}")
        del model
    return names


def concurrency(engine, requests: int, max_tokens: int) -> dict:
    """One client one by one, then 8 concurrent clients, on the same server and requests."""
    report: dict = {}
    with serving(engine) as url:
        measure(url, [engine.name], 2, 1, max_tokens)  # warm-up
        report["one_client"] = measure(url, [engine.name], requests, 1, max_tokens)
        report["eight_clients"] = measure(url, [engine.name], requests, 8, max_tokens)
    report["speedup"] = round(report["eight_clients"]["requests_per_s"] / report["one_client"]["requests_per_s"], 2)
    return report


def llamacpp_report(args) -> dict:
    """The llamacpp backend, measured as the hf one (it answers one request at a time: no adapters part)."""
    from tunekit.serve.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine.from_paths([args.gguf or "smollm2-135m-instruct"])
    try:
        report = {"model": engine.name, "backend": "llamacpp", "file": engine.models[engine.name].root, "threads": engine.threads}
        report.update(concurrency(engine, args.requests, args.max_tokens))
        report["peak_rss_mib"] = round(rss_mib(), 1)
    finally:
        engine.close()
    return report


def hf_report(args) -> dict:
    engine = Engine.from_path("smollm2-135m-instruct")
    base_rss = rss_mib()
    report: dict = {"model": engine.name, "backend": "hf"}
    report.update(concurrency(engine, args.requests, args.max_tokens))

    with tempfile.TemporaryDirectory() as tmp:
        from tunekit.serve.sources import resolve_source

        names = adapters_of(engine, Path(tmp), 3)
        adapter_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
        load_s = []
        for name in names:
            started = time.perf_counter()
            engine.add_adapter(resolve_source(f"{name}={Path(tmp) / name}"))
            load_s.append(round(time.perf_counter() - started, 3))
        with serving(engine) as url:
            one_adapter = measure(url, [names[0]], args.requests, 8, args.max_tokens)
            interleaved = measure(url, names, args.requests, 8, args.max_tokens)
        report["three_adapters"] = {
            "load_s": load_s, "adapter_mib_each": round(adapter_bytes / 3 / 2**20, 2),
            "peak_rss_mib_base": round(base_rss, 1), "peak_rss_mib_with_adapters": round(rss_mib(), 1),
            "one_adapter_wall_s": one_adapter["wall_s"], "interleaved_wall_s": interleaved["wall_s"],
            "interleaved_extra": round(interleaved["wall_s"] / one_adapter["wall_s"] - 1, 3),
        }
    engine.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "llamacpp", "both"], default="hf")
    parser.add_argument("--gguf", help="llamacpp: the GGUF file to serve (default: the embedded model's own file)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    settings = {"requests": args.requests, "max_tokens": args.max_tokens, "cpus": os.cpu_count(), "machine": platform.machine()}
    if args.backend == "llamacpp":
        print(json.dumps({**llamacpp_report(args), "settings": settings}, indent=2))
        return
    report = {**hf_report(args), "settings": settings}
    if args.backend == "both":  # after hf: the peak RSS of the llamacpp part includes hf's, so only rates are compared
        report = {"hf": report, "llamacpp": llamacpp_report(args)}
        hf_rate, cpp_rate = report["hf"]["eight_clients"]["requests_per_s"], report["llamacpp"]["eight_clients"]["requests_per_s"]
        report["llamacpp_vs_hf_eight_clients"] = round(cpp_rate / hf_rate, 2)
        report["llamacpp_vs_hf_one_client"] = round(
            report["llamacpp"]["one_client"]["requests_per_s"] / report["hf"]["one_client"]["requests_per_s"], 2
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
