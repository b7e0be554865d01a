"""The `llamacpp` serving backend: GGUF files run by llama.cpp (llama-cpp-python), the fast CPU path.

Same public surface as the `hf` Engine, so the app (gateway, metrics, request log) cannot tell them
apart. Each complete GGUF (a base, or a run's merged export: one GGUF per tuned model) gets its own
llama.cpp context; a GGUF LoRA file is served on the complete model it was made for, switched on
that model's context per request (llama.cpp sets adapters per context, not per sequence).

One worker thread owns every context and answers requests one at a time, token by token, so
streaming, stop strings, seeds, token budgets and client disconnects behave as in the `hf` backend.
Prompts are built exactly as tunekit's llama.cpp checks build them (the GGUF's embedded chat
template, `tunekit.export.llamacpp`), and decoding stops where llama.cpp's own completion stops
(its end-of-generation tokens), so greedy answers equal `chat_greedy`'s.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import ModelError
from tunekit.serve.backends.gguf_files import GgufSource, base_gguf, resolve_gguf
from tunekit.serve.engine import (
    ChatTemplateError, Event, Generation, PromptTooLongError, Sampling, ServedModel, UnknownModelError,
)
from tunekit.serve.stopstrings import safe_length, stop_cut

MAX_CONTEXT = 4096  # tokens per context: the model's own window when smaller (a KV cache sized for 8k+ wastes memory on a CPU box)


@dataclass
class _Loaded:
    """A served model's llama.cpp side: the context it runs on, and its LoRA file (None: the complete model)."""

    llm: Any
    lora: Any = None
    path: str = ""


@dataclass
class _Job:
    gen: Generation
    loaded: _Loaded
    prompt: list[int]
    sampling: Sampling


class LlamaCppEngine:
    """Serves GGUF files through llama.cpp; `submit` answers requests through one worker thread."""

    def __init__(self, *, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        self.models: dict[str, ServedModel] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._active_lora: dict[int, Any] = {}  # id(llm) -> the LoRA now set on its context
        self._pending: queue.Queue[_Job | None] = queue.Queue()
        self._llama_lock = threading.Lock()  # held while a context decodes, and to change or free LoRAs
        self._registry_lock = threading.Lock()  # models, what they run on, their in-flight counts
        self._retired: dict[str, ServedModel] = {}  # adapters being unloaded, freed once their requests end
        self._closed = False
        self.queue_depth = 0
        self._thread = threading.Thread(target=self._work, name="tunekit-llamacpp", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ loading

    @classmethod
    def from_paths(cls, paths: list, *, gguf: str | None = None, threads: int | None = None) -> "LlamaCppEngine":
        """Serve GGUF files: complete models first (the first is the base of /v1/models), then LoRA files on the first."""
        sources = [p if isinstance(p, GgufSource) else resolve_gguf(p, gguf) for p in paths]
        names = [s.name for s in sources]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ModelError(f"two models would be served as '{duplicate}'", hint="give each its own name: NAME=PATH")
        complete = [s for s in sources if s.kind == "model"]
        if not complete:  # adapters only: their shared base, as the hf backend does
            complete = [base_gguf(sources)]
        engine = cls(threads=threads)
        try:
            for source in complete:
                engine.add_model(source)
            for source in sources:
                if source.kind == "adapter":
                    engine.add_adapter(source)
        except BaseException:
            engine.close()
            raise
        return engine

    def add_model(self, source: GgufSource) -> ServedModel:
        """Load a complete GGUF file on its own context."""
        from tunekit.export.gguf import GgufError, require_llama_cpp
        from tunekit.export.llamacpp import EMBEDDED_TEMPLATE, has_chat_template_file

        llama_cpp = require_llama_cpp()
        self._check_new_name(source.name)
        try:
            probe = llama_cpp.Llama(model_path=str(source.path), vocab_only=True, verbose=False)
            n_ctx = min(int(probe.metadata.get(f"{probe.metadata.get('general.architecture')}.context_length", MAX_CONTEXT)), MAX_CONTEXT)
            probe.close()
            llm = llama_cpp.Llama(
                model_path=str(source.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=self.threads, seed=0, verbose=False,
                chat_format=EMBEDDED_TEMPLATE if has_chat_template_file(source.path) else None,
            )
        except ValueError as exc:  # llama.cpp refused the file
            raise GgufError(f"llama.cpp cannot load {source.path}: {exc}") from None
        kind = "base" if not self.models else "model"
        served = ServedModel(source.name, kind, str(source.path), None, source.name, llm, source.system_prompt)
        with self._registry_lock:
            self._loaded[source.name] = _Loaded(llm, None, str(source.path))
            self.models[source.name] = served
        return served

    def add_adapter(self, source) -> ServedModel:
        """Serve a LoRA on the base model (the first complete model): a GGUF LoRA file, or a PEFT adapter
        directory (converted once to a GGUF LoRA in tunekit's cache)."""
        from tunekit.export.gguf import require_llama_cpp

        from tunekit.export.gguf_lora import cached_lora_gguf
        from tunekit.serve.sources import Source

        llama_cpp = require_llama_cpp()
        if isinstance(source, Source):  # from the app's /v1/load_lora_adapter, or `models:` entries
            source = GgufSource(source.name, Path(source.path), source.kind, source.system_prompt) if source.kind == "adapter" else resolve_gguf(source)
        if source.kind != "adapter":
            raise ModelError(f"{source.path} is a complete model, not a LoRA adapter", hint="serve it as a model of its own")
        self._check_new_name(source.name)
        base = self.models[self.name]
        loaded = self._loaded[self.name]
        path = cached_lora_gguf(source.path, Path(base.root)) if source.path.is_dir() else source.path
        with self._llama_lock:
            lora = llama_cpp.llama_adapter_lora_init(loaded.llm.model, str(path).encode("utf-8"))
        if not lora:
            raise ModelError(f"llama.cpp cannot load {source.path} as a LoRA of {base.root}", hint="was it made for this base model?")
        served = ServedModel(source.name, "adapter", str(source.path), base.name, source.name, loaded.llm, source.system_prompt)
        with self._registry_lock:
            self._loaded[source.name] = _Loaded(loaded.llm, lora, str(source.path))
            self.models[source.name] = served
        return served

    def _check_new_name(self, name: str) -> None:
        if name in self.models:
            raise ModelError(f"a model named '{name}' is already served", hint="unload it first, or pick another name")

    def remove_adapter(self, name: str) -> None:
        """Stop serving a LoRA; requests already decoding on it finish first, then its weights go."""
        with self._registry_lock:
            served = self.models.get(name)
            if served is None or served.kind != "adapter":
                raise UnknownModelError(f"no adapter named '{name}' is served" + (" (it is a complete model)" if served else ""))
            del self.models[name]
            served.retiring = True
            self._retired[name] = served
        self._drop_retired()

    def _drop_retired(self) -> None:
        from tunekit.export.gguf import require_llama_cpp

        llama_cpp = require_llama_cpp()
        with self._registry_lock:
            gone = [self._loaded.pop(n) for n, served in list(self._retired.items()) if served.in_flight == 0]
            self._retired = {n: served for n, served in self._retired.items() if served.in_flight > 0}
        for loaded in gone:
            with self._llama_lock:
                if self._active_lora.get(id(loaded.llm)) is loaded.lora:
                    self._set_lora(loaded.llm, None)
                llama_cpp.llama_adapter_lora_free(loaded.lora)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout=30)
        with self._llama_lock, self._registry_lock:
            for loaded in self._loaded.values():
                if loaded.lora is None:
                    loaded.llm.close()
            self._loaded.clear()

    # ------------------------------------------------------------ requests

    @property
    def name(self) -> str:
        return next(iter(self.models))

    @property
    def source(self) -> str:
        return " + ".join(f"{name} ({m.root})" for name, m in self.models.items())

    @property
    def context_length(self) -> int | None:
        return self._loaded[self.name].llm.n_ctx() if self.models else None

    def served(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise UnknownModelError(f"The model `{name}` does not exist. This server serves: {', '.join(self.models)}")
        return served

    def encode_chat(self, messages: list[dict], model: str | None = None) -> list[int]:
        """Token ids of the conversation under the GGUF's embedded chat template (as llama.cpp's chat handler builds them)."""
        from jinja2 import TemplateError

        from tunekit.export.llamacpp import prompt_token_ids, render_prompt

        served = self.served(model or self.name)
        if served.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": served.system_prompt}, *messages]
        try:
            prompt = render_prompt(served.tokenizer, messages)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {exc}") from None
        if prompt is None:
            raise ChatTemplateError("the GGUF file has no chat template: send raw text to /v1/completions instead")
        return prompt_token_ids(served.tokenizer, prompt)

    def encode_text(self, prompt: str) -> list[int]:
        # As llama.cpp's own completion tokenizes a text prompt.
        return self._loaded[self.name].llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    def submit(
        self, model: str, prompt: list[int], sampling: Sampling, *, n: int = 1, loop: asyncio.AbstractEventLoop | None = None
    ) -> Generation:
        with self._registry_lock:
            served, loaded = self.models.get(model), self._loaded.get(model)
        if served is None or loaded is None:
            raise UnknownModelError(f"The model `{model}` does not exist. This server serves: {', '.join(self.models)}")
        limit = loaded.llm.n_ctx()
        if len(prompt) + sampling.max_tokens > limit:
            raise PromptTooLongError(
                f"this model's maximum context length is {limit} tokens, but {len(prompt) + sampling.max_tokens} were requested "
                f"({len(prompt)} in the messages, {sampling.max_tokens} in the completion); shorten the messages or lower max_tokens"
            )
        with self._registry_lock:
            served.in_flight += 1
        gen = Generation(served, len(prompt), n, loop)
        self.queue_depth += 1
        self._pending.put(_Job(gen, loaded, list(prompt), sampling))
        return gen

    # ------------------------------------------------------------ decoding

    def _work(self) -> None:
        while True:
            job = self._pending.get()
            if job is None or self._closed:
                return
            self.queue_depth -= 1
            try:
                for index in range(job.gen.n):
                    with self._llama_lock:
                        self._decode(job, index)
            except Exception as exc:  # a failed request fails alone, not the server
                job.gen._fail(exc)
            finally:
                with self._registry_lock:
                    job.gen.model.in_flight -= 1
                self._drop_retired()

    def _set_lora(self, llm, lora) -> None:
        """Put `lora` (None: none) on `llm`'s context; its cached prompt was computed without it, so it goes."""
        from tunekit.export.gguf import require_llama_cpp

        llama_cpp = require_llama_cpp()
        if self._active_lora.get(id(llm)) is lora:
            return
        if lora is None:
            llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, scales):
                raise ModelError("llama.cpp could not set the LoRA adapter on its context")
        self._active_lora[id(llm)] = lora
        llm.reset()

    def _decode(self, job: _Job, index: int) -> None:
        """One choice of a request, token by token, with the hf backend's stop, length and streaming rules."""
        from tunekit.export.gguf import require_llama_cpp

        llama_cpp = require_llama_cpp()
        gen, s, llm = job.gen, job.sampling, job.loaded.llm
        if gen.cancelled:
            gen._push(Event(index, "", "cancelled", 0))
            return
        self._set_lora(llm, job.loaded.lora)
        llm.set_seed(s.seed + index if s.seed is not None else random.getrandbits(31))
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        greedy = s.temperature <= 0
        tokens: list[int] = []
        sent = 0
        stream = llm.generate(
            job.prompt, temp=0.0 if greedy else s.temperature, top_p=s.top_p, top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0
        )
        for token in stream:
            if gen.cancelled:
                gen._push(Event(index, "", "cancelled", len(tokens)))
                return
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                self._end(gen, index, self._text(llm, tokens, job.prompt), sent, "stop", len(tokens))
                return
            tokens.append(token)
            text = self._text(llm, tokens, job.prompt)
            cut = stop_cut(text, s.stop)
            if cut >= 0:
                self._end(gen, index, text[:cut], sent, "stop", len(tokens))
                return
            if len(tokens) >= s.max_tokens:
                self._end(gen, index, text, sent, "length", len(tokens))
                return
            safe = safe_length(text, s.stop)
            if safe > sent:
                gen._push(Event(index, text[sent:safe], None, len(tokens)))
                sent = safe
        self._end(gen, index, self._text(llm, tokens, job.prompt), sent, "length", len(tokens))  # the context ran out

    @staticmethod
    def _text(llm, tokens: list[int], prompt: list[int]) -> str:
        # Decoded as llama.cpp's own completion decodes (after the prompt; bytes that are not UTF-8 dropped,
        # and an unfinished character's bytes wait for the next token).
        return llm.detokenize(tokens, prev_tokens=prompt).decode("utf-8", errors="ignore")

    @staticmethod
    def _end(gen: Generation, index: int, text: str, sent: int, finish: str, count: int) -> None:
        gen._push(Event(index, text[sent:] if len(text) > sent else "", finish, count))
