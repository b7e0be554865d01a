"""The `llamacpp` serving backend: GGUF files run by llama.cpp (llama-cpp-python), the fast CPU path.

Same public surface as the `hf` Engine, so the app (gateway, metrics, request log) cannot tell them
apart. Each complete GGUF (a base, or a run's merged export: one GGUF per tuned model) gets its own
llama.cpp context; a GGUF LoRA file is served on the complete model it was made for, switched on
that model's context per request (llama.cpp sets adapters per context, not per sequence).

One worker thread owns every context and decodes concurrent requests together (continuous
batching): each complete model has a batch context of SLOTS sequences over one shared KV cache;
a request's prompt joins the running sequences between decode steps, every running sequence adds
one token per `llama_decode`, and a finished one leaves at once. A request is admitted when the
KV cells it may use (prompt + max_tokens) are free, so a batch never runs out of cache. Because
llama.cpp puts LoRAs on a context rather than on a sequence, one batch serves one (model, LoRA)
pair; requests for another wait, first come first served, until the running batch has drained.
Streaming, stop strings, seeds, token budgets and client disconnects behave as in the `hf`
backend. Prompts are built exactly as tunekit's llama.cpp checks build them (the GGUF's embedded
chat template, `tunekit.export.llamacpp`), and decoding stops where llama.cpp's own completion
stops (its end-of-generation tokens), so greedy answers equal `chat_greedy`'s.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import queue
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.errors import ModelError
from tunekit.serve.backends.gguf_files import GgufSource, base_gguf, resolve_gguf
from tunekit.serve.engine import (
    ChatTemplateError, Event, Generation, PromptTooLongError, Sampling, ServedModel, UnknownModelError,
)
from tunekit.serve.stopstrings import safe_length, stop_cut

MAX_CONTEXT = 4096  # tokens per request: the model's own window when smaller (a KV cache sized for 8k+ wastes memory on a CPU box)
SLOTS = 8  # sequences decoded together on one batch context
MIN_SHARED_PREFIX = 8  # a shorter common start of two prompts is computed again rather than copied
KV_CELLS = 2 * MAX_CONTEXT  # the batch context's KV cache, shared by its sequences (admission keeps within it)


class _BatchContext:
    """A llama.cpp context of SLOTS sequences over one KV cache of `cells`, for a complete model."""

    def __init__(self, llama_cpp, llm, threads: int, cells: int):
        # The Llama object's own settings (no flash attention, its rope scaling, ...): its completions are
        # what greedy answers are checked against, so only the sizes differ.
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = cells
        params.n_batch = cells  # a decode call takes every prompt that joins at once (llama.cpp splits it in ubatches)
        params.n_seq_max = SLOTS + 1  # and one that keeps the last prompt's cache (its cells are shared, not copied)
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.llama_cpp = llama_cpp
        self.cells = cells
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise ModelError(f"llama.cpp could not create a context of {cells} KV cells for {SLOTS} sequences")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(cells, 0, 1)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.lora: Any = None  # the LoRA set on the context now
        self.reserved = 0  # KV cells promised to the running sequences
        self.free_seq_ids = list(range(SLOTS))
        # The last admitted prompt stays in the cache under sequence SLOTS, so that the next prompt with the
        # same start (system prompt, template header) copies those cells instead of computing them again.
        self.cached: list[int] = []
        self.cached_lora: Any = None

    def forget_cached(self) -> None:
        self.llama_cpp.llama_memory_seq_rm(self.memory, SLOTS, -1, -1)
        self.cached, self.cached_lora = [], None

    def reuse(self, seq_id: int, prompt: list[int], lora) -> int:
        """Copy the cached cells of the start `prompt` shares with the last prompt to `seq_id`; returns how many."""
        if lora is not self.cached_lora:
            return 0
        shared = 0
        for a, b in zip(self.cached, prompt[:-1]):  # the prompt's last token is always computed: its logits start the answer
            if a != b:
                break
            shared += 1
        if shared < MIN_SHARED_PREFIX:
            return 0
        self.llama_cpp.llama_memory_seq_cp(self.memory, SLOTS, seq_id, 0, shared)
        return shared

    def keep(self, seq_id: int, prompt: list[int], lora) -> None:
        """Make `seq_id`'s freshly computed prompt the cached one."""
        self.llama_cpp.llama_memory_seq_rm(self.memory, SLOTS, -1, -1)
        self.llama_cpp.llama_memory_seq_cp(self.memory, seq_id, SLOTS, 0, len(prompt))
        self.cached, self.cached_lora = list(prompt), lora

    def release(self, seq_id: int) -> None:
        """A sequence is over: its cells (those not shared with the cached prompt) and its slot go back."""
        self.llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        self.free_seq_ids.append(seq_id)

    def close(self) -> None:
        self.llama_cpp.llama_batch_free(self.batch)
        self.llama_cpp.llama_free(self.ctx)


@dataclass
class _Loaded:
    """A served model's llama.cpp side: the Llama object (vocabulary, metadata), the batch context it
    decodes on, its LoRA file (None: the complete model), and its per-request token limit."""

    llm: Any
    lora: Any = None
    path: str = ""
    batch: _BatchContext | None = None
    n_ctx: int = MAX_CONTEXT


@dataclass
class _Job:
    gen: Generation
    loaded: _Loaded
    prompt: list[int]
    sampling: Sampling


@dataclass
class _Seq:
    """One choice of a job, decoding on a batch context."""

    job: _Job
    index: int
    seq_id: int = -1
    need: int = 0  # KV cells reserved: prompt + max_tokens
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    position: int = 0  # tokens of this sequence in the KV cache
    next_input: list[int] = field(default_factory=list)  # fed at the next decode: the prompt, then each picked token
    rng: Any = None
    done: bool = False


class LlamaCppEngine:
    """Serves GGUF files through llama.cpp; `submit` answers requests through one worker thread."""

    def __init__(self, *, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        self.models: dict[str, ServedModel] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._pending: queue.Queue[_Job | None] = queue.Queue()
        self._llama_lock = threading.Lock()  # held while a context decodes, and to change or free LoRAs
        self._registry_lock = threading.Lock()  # models, what they run on, their in-flight counts
        self._retired: dict[str, ServedModel] = {}  # adapters being unloaded, freed once their requests end
        self._closed = False
        self.queue_depth = 0
        self.peak_batch = 0  # the most sequences decoded in one step so far
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
            # The Llama object tokenizes, detokenizes and reads metadata; decoding runs on the batch context.
            llm = llama_cpp.Llama(
                model_path=str(source.path), n_ctx=256, n_batch=256, n_threads=self.threads, seed=0, verbose=False,
                chat_format=EMBEDDED_TEMPLATE if has_chat_template_file(source.path) else None,
            )
        except ValueError as exc:  # llama.cpp refused the file
            raise GgufError(f"llama.cpp cannot load {source.path}: {exc}") from None
        try:
            batch = _BatchContext(llama_cpp, llm, self.threads, max(KV_CELLS, n_ctx))
        except ModelError:
            llm.close()
            raise
        kind = "base" if not self.models else "model"
        served = ServedModel(source.name, kind, str(source.path), None, source.name, llm, source.system_prompt)
        with self._registry_lock:
            self._loaded[source.name] = _Loaded(llm, None, str(source.path), batch, n_ctx)
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
            self._loaded[source.name] = _Loaded(loaded.llm, lora, str(source.path), loaded.batch, loaded.n_ctx)
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
        with self._registry_lock:
            gone = [self._loaded.pop(n) for n, served in list(self._retired.items()) if served.in_flight == 0]
            self._retired = {n: served for n, served in self._retired.items() if served.in_flight > 0}
        for loaded in gone:
            with self._llama_lock:
                if loaded.batch.lora is loaded.lora:
                    self._set_lora(loaded.batch, None)
                if loaded.batch.cached_lora is loaded.lora:
                    loaded.batch.forget_cached()
                loaded.batch.llama_cpp.llama_adapter_lora_free(loaded.lora)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout=30)
        with self._llama_lock, self._registry_lock:
            for loaded in self._loaded.values():
                if loaded.lora is None:
                    loaded.batch.close()
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
        return self._loaded[self.name].n_ctx if self.models else None

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
        limit = loaded.n_ctx
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
        """The scheduler: admit waiting choices into the batch, decode one step for all, repeat."""
        waiting: collections.deque[_Seq] = collections.deque()
        running: list[_Seq] = []
        while True:
            block = not waiting and not running
            while True:  # everything submitted so far, without waiting when there is work
                try:
                    job = self._pending.get(block=block)
                except queue.Empty:
                    break
                if job is None or self._closed:
                    return
                self.queue_depth -= 1
                waiting.extend(_Seq(job, index) for index in range(job.gen.n))
                block = False
            with self._llama_lock:
                self._admit(waiting, running)
                self.peak_batch = max(self.peak_batch, len(running))
                if running:
                    try:
                        self._step(running)
                    except Exception as exc:  # a failed batch fails its requests, not the server
                        for seq in running:
                            if not seq.done:
                                seq.job.gen._fail(exc)
                                self._finish(seq)
                running[:] = [seq for seq in running if not seq.done]
            self._drop_retired()

    def _admit(self, waiting: collections.deque, running: list[_Seq]) -> None:
        """Move waiting choices into the batch, first come first served, while they share its (model,
        LoRA), a sequence slot is free and their KV cells fit."""
        while waiting:
            seq = waiting[0]
            job = seq.job
            if job.gen.cancelled:
                waiting.popleft()
                job.gen._push(Event(seq.index, "", "cancelled", 0))
                self._finish(seq)
                continue
            batch = job.loaded.batch
            if running and (running[0].job.loaded.batch is not batch or batch.lora is not job.loaded.lora):
                return  # another model or LoRA is decoding: this one waits for that batch to drain
            need = len(job.prompt) + job.sampling.max_tokens
            if not batch.free_seq_ids or (running and batch.reserved + len(batch.cached) + need > batch.cells):
                return
            waiting.popleft()
            try:
                if not running:
                    self._set_lora(batch, job.loaded.lora)
                    if batch.reserved + len(batch.cached) + need > batch.cells:
                        batch.forget_cached()
                seq.seq_id, seq.need = batch.free_seq_ids.pop(0), need
                batch.reserved += need
                seq.position = batch.reuse(seq.seq_id, job.prompt, job.loaded.lora)
            except Exception as exc:  # this request fails alone; the scheduler goes on
                job.gen._fail(exc)
                self._finish(seq)
                continue
            seq.next_input = list(job.prompt[seq.position :])
            seed = job.sampling.seed + seq.index if job.sampling.seed is not None else random.getrandbits(31)
            seq.rng = random.Random(seed)
            running.append(seq)

    def _set_lora(self, batch: _BatchContext, lora) -> None:
        """Put `lora` (None: none) on a batch context (only between batches: every sequence on it uses it)."""
        llama_cpp = batch.llama_cpp
        if batch.lora is lora:
            return
        if lora is None:
            llama_cpp.llama_set_adapters_lora(batch.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(batch.ctx, adapters, 1, scales):
                raise ModelError("llama.cpp could not set the LoRA adapter on its context")
        batch.lora = lora

    def _step(self, running: list[_Seq]) -> None:
        """One llama_decode for every running sequence (a joining one brings its whole prompt), then a
        token for each, with the hf backend's stop, length and streaming rules."""
        import numpy as np

        batch = running[0].job.loaded.batch
        llama_cpp, b = batch.llama_cpp, batch.batch
        count, last = 0, []
        for seq in running:
            for offset, token in enumerate(seq.next_input):
                b.token[count], b.pos[count], b.n_seq_id[count] = token, seq.position + offset, 1
                b.seq_id[count][0] = seq.seq_id
                b.logits[count] = offset == len(seq.next_input) - 1
                count += 1
            last.append(count - 1)
        b.n_tokens = count
        status = llama_cpp.llama_decode(batch.ctx, b)
        if status != 0:
            raise ModelError(f"llama.cpp could not decode the batch (status {status})")
        fresh = [seq for seq in running if not seq.tokens]  # nothing generated yet: its prompt went in now
        if fresh:  # prompts computed in this step: the last one is cached for the next request
            seq = fresh[-1]
            batch.keep(seq.seq_id, seq.job.prompt, seq.job.loaded.lora)
        for seq, index in zip(running, last):
            seq.position += len(seq.next_input)
            seq.next_input = []
            if seq.job.gen.cancelled:
                seq.job.gen._push(Event(seq.index, "", "cancelled", len(seq.tokens)))
                self._finish(seq)
                continue
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(batch.ctx, index), shape=(batch.n_vocab,))
            token = _pick(logits, seq.job.sampling, seq.rng)
            self._advance(seq, token, llama_cpp.llama_vocab_is_eog(batch.vocab, token))

    def _advance(self, seq: _Seq, token: int, end_of_generation: bool) -> None:
        job, s = seq.job, seq.job.sampling
        llm = job.loaded.llm
        if end_of_generation:
            self._end(job.gen, seq.index, self._text(llm, seq.tokens, job.prompt), seq.sent, "stop", len(seq.tokens))
            return self._finish(seq)
        seq.tokens.append(token)
        text = self._text(llm, seq.tokens, job.prompt)
        cut = stop_cut(text, s.stop)
        if cut >= 0:
            self._end(job.gen, seq.index, text[:cut], seq.sent, "stop", len(seq.tokens))
            return self._finish(seq)
        if len(seq.tokens) >= s.max_tokens:
            self._end(job.gen, seq.index, text, seq.sent, "length", len(seq.tokens))
            return self._finish(seq)
        safe = safe_length(text, s.stop)
        if safe > seq.sent:
            job.gen._push(Event(seq.index, text[seq.sent : safe], None, len(seq.tokens)))
            seq.sent = safe
        seq.next_input = [token]

    def _finish(self, seq: _Seq) -> None:
        """A choice is over: its KV cells and slot go back; the last choice of a request releases its model."""
        if seq.done:
            return
        seq.done = True
        batch = seq.job.loaded.batch
        if seq.seq_id >= 0:
            batch.release(seq.seq_id)
            batch.reserved -= seq.need
        gen = seq.job.gen
        gen._rows_done += 1
        if gen._rows_done == gen.n:
            with self._registry_lock:
                gen.model.in_flight -= 1

    @staticmethod
    def _text(llm, tokens: list[int], prompt: list[int]) -> str:
        # Decoded as llama.cpp's own completion decodes (after the prompt; bytes that are not UTF-8 dropped,
        # and an unfinished character's bytes wait for the next token).
        return llm.detokenize(tokens, prev_tokens=prompt).decode("utf-8", errors="ignore")

    @staticmethod
    def _end(gen: Generation, index: int, text: str, sent: int, finish: str, count: int) -> None:
        gen._push(Event(index, text[sent:] if len(text) > sent else "", finish, count))


def _pick(logits, sampling: Sampling, rng: random.Random) -> int:
    """Next token: argmax when greedy, else nucleus sampling at the temperature (as the hf backend picks)."""
    import numpy as np

    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    if sampling.top_p < 1.0:
        keep = np.cumsum(sorted_probs) - sorted_probs <= sampling.top_p
        sorted_probs = np.where(keep, sorted_probs, 0.0)
    threshold = rng.random() * sorted_probs.sum()
    return int(order[min(int(np.searchsorted(np.cumsum(sorted_probs), threshold, side="right")), len(order) - 1)])
