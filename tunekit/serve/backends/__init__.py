"""The engines behind `tunekit serve`'s one API, chosen by `serve.backend`.

`hf` is tunekit.serve.engine.Engine (transformers + PEFT); `llamacpp` runs GGUF files on llama.cpp
(backends/llamacpp.py); `vllm` forwards to a `vllm serve` subprocess or another OpenAI-compatible
upstream (backends/proxy.py). Every engine has the same public surface, which the app uses:
`name`, `source`, `models`, `served`, `encode_chat`, `encode_text`, `submit`, `add_adapter`,
`remove_adapter`, `queue_depth`, `context_length`, `close`.
"""

from __future__ import annotations


def open_engine(settings, specs: list, *, allow_pickle: bool = False, trust_remote_code: bool = False):
    """The engine `settings.backend` names, serving `specs` (paths, NAME=PATH, or Sources)."""
    if settings.backend == "llamacpp":
        from tunekit.serve.backends.llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_paths(specs, gguf=settings.gguf)
    if settings.backend == "vllm":
        from tunekit.serve.backends.proxy import open_vllm

        return open_vllm(specs, settings, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    from tunekit.serve.engine import Engine

    return Engine.from_paths(
        specs, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        max_batch_size=settings.max_batch_size, batch_wait_s=settings.batch_wait_ms / 1000,
    )
