"""Run a GGUF file through llama.cpp (llama-cpp-python): chats with its embedded template, perplexity.

This is how a user's llama.cpp-based runtime sees the file, so the checks here read everything
(chat template, special tokens, stop tokens) from the GGUF itself, never from the HF side.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

from tunekit.export.gguf import GgufError, require_llama_cpp

# The name llama-cpp-python registers the GGUF's own `tokenizer.chat_template` under. Naming it
# explicitly stops the library from swapping in a built-in format it guesses from the template text.
EMBEDDED_TEMPLATE = "chat_template.default"


@contextmanager
def open_gguf(path: Path, *, n_ctx: int = 2048, logits_all: bool = False):
    """A llama_cpp.Llama on `path`, closed on exit (the C side holds the weights)."""
    llama_cpp = require_llama_cpp()
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            logits_all=logits_all,
            n_threads=os.cpu_count() or 1,
            seed=0,
            verbose=False,
            chat_format=EMBEDDED_TEMPLATE if has_chat_template_file(path) else None,
        )
    except ValueError as exc:  # llama.cpp refused the file
        raise GgufError(f"llama.cpp cannot load {path}: {exc}") from None
    try:
        yield llm
    finally:
        llm.close()


def has_chat_template_file(path: Path) -> bool:
    from tunekit.export.gguf import read_gguf_metadata

    return bool(read_gguf_metadata(path)["chat_template"])


def token_text(llm, token_id: int) -> str:
    return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")


def end_of_generation(llm, token_ids) -> dict[int, bool]:
    """Whether llama.cpp ends generation at each of `token_ids` (its eos, eot and auto-detected turn ends)."""
    llama_cpp = require_llama_cpp()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {int(t): bool(llama_cpp.llama_vocab_is_eog(vocab, int(t))) for t in token_ids}


def render_prompt(llm, messages: list[dict]) -> str | None:
    """The prompt text llama-cpp-python builds for `messages` from the GGUF's embedded template
    (None when the file has no template)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llm, eos) if eos != -1 else "",
        bos_token=token_text(llm, bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    return formatter(messages=messages).prompt


def prompt_token_ids(llm, prompt: str) -> list[int]:
    # Exactly how llama-cpp-python's chat handler tokenizes a rendered template.
    return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


def chat_greedy(llm, messages: list[dict], max_tokens: int) -> tuple[str, str]:
    """(text, finish_reason) of a greedy chat completion through the embedded template."""
    if llm.chat_format != EMBEDDED_TEMPLATE:
        raise GgufError("the GGUF file has no chat template: llama.cpp cannot format a chat for it")
    response = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, seed=0)
    choice = response["choices"][0]
    return choice["message"]["content"] or "", choice["finish_reason"]


def perplexity(path: Path, text: str, *, context: int = 512, max_tokens: int = 4096, token_ids: list[int] | None = None) -> dict:
    """Perplexity of `text` under the GGUF at `path`, scored in non-overlapping `context`-token windows
    (the first token of each window is context only). Pass `token_ids` to score the exact tokens another
    file was scored on."""
    import numpy as np

    with open_gguf(path, n_ctx=context, logits_all=True) as llm:
        tokens = token_ids if token_ids is not None else llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        tokens = list(tokens)[:max_tokens]
        if len(tokens) < 2:
            raise GgufError("the perplexity text is too short: fewer than 2 tokens")
        total, scored = 0.0, 0
        for start in range(0, len(tokens), context):
            window = tokens[start : start + context]
            if len(window) < 2:
                continue
            llm.reset()
            llm.eval(window)
            # float32 exponentials summed in float64: 8x faster than a float64 copy of 511 x vocabulary
            # logits, and the same log-normaliser to ~1e-8.
            logits = llm.scores[: len(window) - 1]
            peak = logits.max(axis=-1, keepdims=True)
            log_norm = peak[:, 0].astype(np.float64) + np.log(np.exp(logits - peak).sum(axis=-1, dtype=np.float64))
            targets = np.asarray(window[1:])
            total += float((log_norm - logits[np.arange(len(targets)), targets].astype(np.float64)).sum())
            scored += len(targets)
    return {"perplexity": math.exp(total / scored), "tokens_scored": scored, "token_ids": tokens}
