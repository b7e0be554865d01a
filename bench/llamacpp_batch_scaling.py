"""How much llama.cpp gains from decoding several sequences in one step on this CPU: the ceiling of the
llamacpp backend's continuous batching, whatever the server around it does.

On the backend's own batch context (tunekit.serve.backends.llamacpp._BatchContext: one KV cache shared
by the sequences), each of 1, 2, 4 and 8 sequences gets the same prompt, then `--steps` decode steps
of one token per sequence are timed. Reports ms per step and tokens/s for each batch size, and the
8-sequence rate over the 1-sequence rate: the most 8 concurrent clients can gain over one.

    .venv/bin/python bench/llamacpp_batch_scaling.py [--gguf FILE ...] [--steps 20]

Appends one JSON object per file to bench/results/llamacpp_batch_scaling.jsonl. A figure, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "llamacpp_batch_scaling.jsonl"
PROMPT = b"Hello there, what is the capital of France and why is it the capital?"


def measure(path: Path, steps: int) -> dict:
    import llama_cpp

    from tunekit.serve.backends import llamacpp as backend

    threads = os.cpu_count() or 1
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=threads, verbose=False)
    context = backend._BatchContext(llama_cpp, llm, threads, backend.KV_CELLS)
    batch = context.batch
    tokens = llm.tokenize(PROMPT, add_bos=True)
    rows = []
    try:
        for sequences in (1, 2, 4, 8):
            for seq in range(backend.SLOTS + 1):
                llama_cpp.llama_memory_seq_rm(context.memory, seq, -1, -1)
            count = 0
            for seq in range(sequences):  # the prompt of every sequence, in one decode
                for position, token in enumerate(tokens):
                    batch.token[count], batch.pos[count], batch.n_seq_id[count] = token, position, 1
                    batch.seq_id[count][0] = seq
                    batch.logits[count] = position == len(tokens) - 1
                    count += 1
            batch.n_tokens = count
            assert llama_cpp.llama_decode(context.ctx, batch) == 0
            started = time.perf_counter()
            for step in range(steps):
                for seq in range(sequences):
                    batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = tokens[step % len(tokens)], len(tokens) + step, 1
                    batch.seq_id[seq][0] = seq
                    batch.logits[seq] = 1
                batch.n_tokens = sequences
                assert llama_cpp.llama_decode(context.ctx, batch) == 0
            per_step = (time.perf_counter() - started) / steps
            rows.append({"sequences": sequences, "ms_per_step": round(per_step * 1000, 2), "tokens_per_s": round(sequences / per_step, 1)})
    finally:
        context.close()
        llm.close()
    return {
        "workload": f"llama.cpp decode steps of 1-8 sequences on one shared KV cache ({path.name})",
        "file": str(path), "threads": threads, "steps": steps, "batches": rows,
        "eight_over_one": round(rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2),
        "settings": {"cpus": os.cpu_count(), "machine": platform.machine()}, "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, action="append", help="GGUF files (default: the embedded model's own Q4_1 file)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from tunekit.models.loading import _embedded_gguf

    for path in args.gguf or [_embedded_gguf("smollm2-135m-instruct")]:
        append_record(RESULTS, measure(Path(path), args.steps))


if __name__ == "__main__":
    main()
