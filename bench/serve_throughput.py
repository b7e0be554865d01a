"""Serving throughput on the embedded model: one client sending requests one by one against 8
concurrent clients, same server, same requests; p50/p95 latency and time to first token.
hf backend: then three adapters of the base (resident memory against base + adapters + 10 %, interleaved
requests against the same requests to one adapter), and a fourth adapter loaded over HTTP while 8 clients
keep sending requests (load time, errors, requests answered during the load).
llamacpp backend: the embedded GGUF file itself (Q4_1), or --gguf FILE (e.g. an F16 export);
`--backend both` measures hf then llamacpp and reports llamacpp's requests/s ratio to hf's.

    .venv/bin/python bench/serve_throughput.py [--backend hf|llamacpp|both] [--gguf FILE] [--requests 24] [--max-tokens 24]

Prints a JSON report and appends it to bench/results/serve_throughput.jsonl. A benchmark, not a test:
it reports figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai

from tunekit.serve import Engine, create_app
from tunekit.serve.app import serve_in_background
from tunekit.serve.gateway import Gateway

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_throughput.jsonl"
ADMIN_KEY = "bench-admin-key"

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about rain.", "List three fruits.", "What is 2+2?",
    "Say hello in Spanish.", "Name a color.", "What is Python?", "Count to five.",
]


@contextmanager
def serving(engine: Engine, adapter_roots: list[Path] | None = None, request_log=None):
    gateway = Gateway.from_settings(env={"TUNEKIT_ADMIN_KEY": ADMIN_KEY})  # keys on, as in production; no limits
    app = create_app(engine, max_new_tokens_limit=256, adapter_roots=adapter_roots, gateway=gateway, request_log=request_log)
    with serve_in_background(app) as url:
        yield url


def one(client, model: str, question: str, max_tokens: int, chunks: list[float] | None = None) -> tuple[float, float]:
    """(latency, time to first token) of one streamed greedy request; `chunks` gets each text chunk's arrival time."""
    started = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if chunks is not None:
                chunks.append(time.perf_counter())
            if first is None:
                first = time.perf_counter() - started
    return time.perf_counter() - started, first or 0.0


def measure(url: str, models: list[str], requests: int, clients: int, max_tokens: int, chunks: list[float] | None = None) -> dict:
    client = openai.OpenAI(base_url=url, api_key=ADMIN_KEY, max_retries=0, timeout=600)
    jobs = [(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)]) for i in range(requests)]
    done: list[float] = []  # finish times, for "answered while an adapter was loading"

    def job(item):
        try:
            result = one(client, item[0], item[1], max_tokens, chunks)
        except openai.OpenAIError as exc:
            return exc
        done.append(time.perf_counter())
        return result

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(job, jobs))
    wall = time.perf_counter() - started
    results = [o for o in outcomes if not isinstance(o, Exception)]
    errors = [f"{type(o).__name__}: {o}"[:200] for o in outcomes if isinstance(o, Exception)]
    latencies = sorted(r[0] for r in results) or [0.0]
    ttfts = sorted(r[1] for r in results) or [0.0]
    return {
        "workload": f"{clients} concurrent clients, {requests} streamed requests of at most {max_tokens} tokens to {', '.join(models)}",
        "clients": clients, "requests": requests, "errors": len(errors), "error_samples": errors[:3],
        "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 3), "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_p95_s": round(percentile(ttfts, 0.95), 3),
        "finished_at": done,
    }


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def rss_mib() -> float:
    """Resident memory now (not the peak: building test adapters must not count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _write_adapters(base_path: str, root: str, count: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                               LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        model.save_pretrained(Path(root) / f"a{i}")


def adapters_of(engine: Engine, root: Path, count: int) -> list[str]:
    """`count` random LoRA adapters of the engine's base, written by a child process so that the
    models built to write them do not stay in this process's resident memory."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_write_adapters, args=(str(engine.base_source.path), str(root), count))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"writing the test adapters failed (exit {process.exitcode})")
    return [f"a{i}" for i in range(count)]


def hot_load(url: str, busy_model: str, name: str, path: Path, requests: int, max_tokens: int) -> dict:
    """Load `name` over HTTP while 8 clients send requests to `busy_model`."""
    base = url.removesuffix("/v1")
    background: dict = {}
    chunks: list[float] = []
    thread = threading.Thread(target=lambda: background.update(measure(url, [busy_model], requests, 8, max_tokens, chunks)))
    thread.start()
    time.sleep(1.5)  # let the clients get going
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)
    ended = time.perf_counter()
    thread.join()
    during = sorted(t for t in chunks if started <= t <= ended)
    check = measure(url, [name], 1, 1, max_tokens)
    return {
        "status": response.status_code, "load_s": round(ended - started, 3),
        "background_requests": background["requests"], "background_errors": background["errors"],
        "background_answered_during_load": sum(started <= t <= ended for t in background["finished_at"]),
        "background_chunks_streamed_during_load": len(during),
        # the longest wait for the next streamed chunk, from the load's start to its end: how long serving stalled
        "longest_stream_gap_during_load_s": round(max(b - a for a, b in zip([started, *during], [*during, ended])), 3),
        "new_adapter_answers": check["errors"] == 0,
    }


def concurrency(engine, requests: int, max_tokens: int) -> dict:
    """One client one by one, then 8 concurrent clients, on the same server and requests."""
    report: dict = {}
    with serving(engine) as url:
        measure(url, [engine.name], 2, 1, max_tokens)  # warm-up
        report["one_client"] = measure(url, [engine.name], requests, 1, max_tokens)
        report["eight_clients"] = measure(url, [engine.name], requests, 8, max_tokens)
    report["speedup"] = round(report["eight_clients"]["requests_per_s"] / report["one_client"]["requests_per_s"], 2)
    for part in ("one_client", "eight_clients"):
        report[part].pop("finished_at")
    return report


def llamacpp_report(args) -> dict:
    """The llamacpp backend, measured as the hf one (it answers one request at a time: no adapters part)."""
    from tunekit.serve.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine.from_paths([args.gguf or "smollm2-135m-instruct"])
    try:
        report = {"model": engine.name, "backend": "llamacpp", "file": engine.models[engine.name].root, "threads": engine.threads}
        report.update(concurrency(engine, args.requests, args.max_tokens))
        report["rss_mib"] = round(rss_mib(), 1)
    finally:
        engine.close()
    return report


def hf_report(args) -> dict:
    engine = Engine.from_path("smollm2-135m-instruct")
    report: dict = {"model": engine.name, "backend": "hf"}
    report.update(concurrency(engine, args.requests, args.max_tokens))
    base_rss = rss_mib()  # after serving traffic, as the figure with adapters is

    with tempfile.TemporaryDirectory() as tmp:
        from tunekit.serve.sources import resolve_source

        root = Path(tmp)
        names = adapters_of(engine, root, 4)
        adapter_bytes = sum(p.stat().st_size for p in (root / "a0").rglob("*.safetensors"))
        hot_name, names = names[-1], names[:3]
        load_s = []
        for name in names:
            started = time.perf_counter()
            engine.add_adapter(resolve_source(f"{name}={root / name}"))
            load_s.append(round(time.perf_counter() - started, 3))
        with serving(engine, adapter_roots=[root]) as url:
            measure(url, names, 3, 3, args.max_tokens)  # warm-up
            one_adapter = measure(url, [names[0]], args.requests, 8, args.max_tokens)
            interleaved = measure(url, names, args.requests, 8, args.max_tokens)
            with_adapters_rss = rss_mib()
            report["hot_load"] = hot_load(url, names[0], hot_name, root / hot_name, args.requests, args.max_tokens)
        allowed = (base_rss + 3 * adapter_bytes / 2**20) * 1.10
        report["three_adapters"] = {
            "load_s": load_s, "adapter_mib_each": round(adapter_bytes / 2**20, 2),
            "rss_mib_base": round(base_rss, 1), "rss_mib_with_adapters": round(with_adapters_rss, 1),
            "rss_mib_allowed": round(allowed, 1), "rss_within_target": with_adapters_rss <= allowed,
            "one_adapter_wall_s": one_adapter["wall_s"], "interleaved_wall_s": interleaved["wall_s"],
            "errors": one_adapter["errors"] + interleaved["errors"],
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
        append_record(RESULTS, {**llamacpp_report(args), "settings": settings})
        return
    report = hf_report(args)
    if args.backend == "both":  # llamacpp after hf, in the same process: only rates are compared, not memory
        report = {"hf": report, "llamacpp": llamacpp_report(args)}
        for part in ("one_client", "eight_clients"):
            rate = report["llamacpp"][part]["requests_per_s"] / report["hf"][part]["requests_per_s"]
            report[f"llamacpp_vs_hf_{part}"] = round(rate, 2)
    append_record(RESULTS, {**report, "settings": settings})

if __name__ == "__main__":
    main()
