"""The `hf` serving backend: one base model in memory, any number of LoRA adapters on it, and a
scheduler that answers concurrent requests in shared batches.

One thread owns the model. Requests queue up; the scheduler takes what is waiting (up to
`max_batch_size`), left-pads the prompts and decodes them together with one KV cache, each row
with its own adapter (PEFT's mixed-adapter forward, `adapter_names=`; the shared model's active
adapter is never switched), sampling settings, stop strings and token budget. A row leaves the
batch when it ends; requests that arrive while a batch runs join it between decode steps
(continuous batching) as long as there is room. Greedy rows pick the same tokens as decoding them
alone: padded positions are masked out and every row keeps its own position ids.

Adapters load and unload at run time (`add_adapter`, `remove_adapter`) between decode steps; an
adapter being removed stays until the rows that started on it have finished.
"""

from __future__ import annotations

import asyncio
import re
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunekit.errors import ModelError, TunekitError
from tunekit.serve.lora_batch import StackedAdapters
from tunekit.serve.sources import Source, plan, resolve_source
from tunekit.serve.stopstrings import safe_length, stop_cut

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class PromptTooLongError(TunekitError):
    """The prompt plus the requested completion does not fit the model's context window."""


class ChatTemplateError(TunekitError):
    """The model's chat template refused the conversation (e.g. roles that must alternate)."""


class UnknownModelError(TunekitError):
    """The requested model is not served here."""


class UpstreamError(TunekitError):
    """The upstream server a proxy backend forwards to failed or refused; `status` is what the client gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Completion(NamedTuple):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length" (the token budget ran out)


@dataclass
class ServedModel:
    """One id in /v1/models."""

    name: str
    kind: str  # "base" (the loaded complete model) or "adapter"
    root: str  # where its weights came from
    parent: str | None  # the base's id, for adapters
    adapter: str  # PEFT adapter name used in batches (BASE_ADAPTER for the base)
    tokenizer: Any  # encodes this model's chat template (an adapter's run may carry its own)
    system_prompt: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    retiring: bool = False
    version: int | None = None  # the registry version answering under this name (NAME@ALIAS), else None
    follows: str | None = None  # "NAME@ALIAS" whose holder this name answers with (see serve/follow.py)


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None


class Event(NamedTuple):
    index: int  # the choice
    text: str  # new text since the last event of this choice ("" on the final event)
    finish_reason: str | None  # set on the choice's last event
    completion_tokens: int


class Generation:
    """A submitted request: its choices' events as they are produced, and the final result."""

    def __init__(self, model: ServedModel, prompt_tokens: int, n: int, loop: asyncio.AbstractEventLoop | None):
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.n = n
        self.cancelled = False
        self.first_token_at: float | None = None
        self.submitted_at = time.monotonic()
        self._loop = loop
        self._events: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._texts = [""] * n
        self._finish: list[str | None] = [None] * n
        self._tokens = [0] * n
        self._open = n
        self._rows_done = 0
        self.error: BaseException | None = None

    # -- called by the scheduler thread
    def _emit(self, item) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._events.put_nowait, item)
            except RuntimeError:  # the client's event loop is gone: nobody is listening
                self.cancelled = True
        else:
            self._events.put(item)

    def _push(self, event: Event) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self._texts[event.index] += event.text
        self._tokens[event.index] = event.completion_tokens
        if event.finish_reason is not None:
            self._finish[event.index] = event.finish_reason
            self._open -= 1
        self._emit(event)
        if self._open == 0:
            self._emit(None)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._emit(None)

    # -- called by the client
    def cancel(self) -> None:
        self.cancelled = True

    async def accepted(self) -> None:
        """Returns once the engine took the request; a proxy backend raises UpstreamError here when its upstream refused it."""

    def events(self):
        """Blocking iterator over events (for a Generation submitted without an event loop)."""
        while True:
            item = self._events.get()
            if item is None:
                break
            yield item
        if self.error is not None:
            raise self.error

    async def aevents(self):
        while True:
            item = await self._events.get()
            if item is None:
                break
            yield item
        if self.error is not None:
            raise self.error

    def completions(self) -> list[Completion]:
        return [Completion(self._texts[i], self.prompt_tokens, self._tokens[i], self._finish[i] or "stop") for i in range(self.n)]

    @property
    def completion_tokens(self) -> int:
        return sum(self._tokens)


@dataclass
class _Row:
    gen: Generation
    index: int
    prompt: list[int]
    adapter: str
    sampling: Sampling
    generator: Any
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    done: bool = False


class Engine:
    """Serves a base model and its adapters; `submit` answers requests through the scheduler."""

    def __init__(self, model, tokenizer, base: Source, *, max_batch_size: int = 8, batch_wait_s: float = 0.01):
        self.model = model
        self.tokenizer = tokenizer
        self.base_source = base
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.models: dict[str, ServedModel] = {
            base.name: ServedModel(base.name, "base", base.path, None, BASE_ADAPTER, tokenizer, base.system_prompt,
                                    version=base.version, follows=base.follows)
        }
        self.eos_token_ids = self._eos_ids()
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        self._pending: queue.Queue[_Row] = queue.Queue()
        self._model_lock = threading.Lock()  # held for each forward pass, and to change adapters
        self._registry_lock = threading.Lock()
        self._retired: list[ServedModel] = []
        self._swaps = 0  # adapters swapped in under a served name (replace_adapter)
        self._adapter_changes = 0  # attach/delete count: the stacked LoRA weights follow it
        self._stacks = StackedAdapters()
        self._closed = False
        self.queue_depth = 0
        self._thread = threading.Thread(target=self._schedule, name="tunekit-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ loading

    @classmethod
    def from_path(cls, path: Path | str, *, allow_pickle: bool = False, trust_remote_code: bool = False, **options) -> "Engine":
        """Serve one run directory, adapter directory, recipe file, model directory or base model name."""
        return cls.from_paths([path], allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, **options)

    @classmethod
    def from_paths(
        cls, paths: list, *, allow_pickle: bool = False, trust_remote_code: bool = False, system_prompts: dict | None = None, **options
    ) -> "Engine":
        """Serve several sources of one base: a complete model and/or adapters (NAME=PATH names them)."""
        sources = [
            p if isinstance(p, Source) else resolve_source(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
            for p in paths
        ]
        for source in sources:
            if system_prompts and source.name in system_prompts:
                source.system_prompt = system_prompts[source.name]
        base, adapters = plan(sources)
        engine = cls._load_base(base, **options)
        for adapter in adapters:
            engine.add_adapter(adapter)
        return engine

    @classmethod
    def _load_base(cls, base: Source, **options) -> "Engine":
        import torch

        from tunekit.models import load_model, load_tokenizer, resolve_model
        from tunekit.models.loading import EMBEDDED_MODELS
        from tunekit.models.templates import resize_for_tokenizer

        try:
            model_path = resolve_model(base.path, allow_pickle=base.allow_pickle)  # checks safetensors vs pickle
            tokenizer = load_tokenizer(model_path, trust_remote_code=base.trust_remote_code, chat_template=base.chat_template)
            model = load_model(model_path, trust_remote_code=base.trust_remote_code, allow_pickle=base.allow_pickle)
            resize_for_tokenizer(model, tokenizer)  # a row for each token the recipe's template added
        except ModelError as exc:
            if base.path in EMBEDDED_MODELS or Path(base.path).exists():
                raise
            reason = exc.message.splitlines()[0][:300]
            raise ModelError(
                f"cannot serve '{base.path}': no such run or model directory, and loading it as a hub id failed ({reason})",
                hint="pass a run, adapter or model directory, or a base model such as 'smollm2-135m-instruct'",
            ) from None
        # Weights load on the CPU; a server on a machine with a GPU is expected to use it.
        # (CUDA_VISIBLE_DEVICES="" keeps the server on the CPU.)
        if torch.cuda.is_available():
            model.to("cuda")
        model.eval()
        base.path = model_path
        return cls(model, tokenizer, base, **options)

    def add_adapter(self, source: Source) -> ServedModel:
        """Attach an adapter of this base under `source.name`, between decode steps. ModelError when it
        does not fit (other base, corrupt or pickled weights); the server keeps serving the others."""
        with self._registry_lock:
            if source.name in self.models:
                raise ModelError(f"a model named '{source.name}' is already served", hint="unload it first, or pick another name")
        served = self._attach(source, source.name)
        with self._registry_lock:
            self.models[source.name] = served
        return served

    def replace_adapter(self, name: str, source: Source) -> ServedModel:
        """Answer `name` with the adapter of `source` from now on (a registry alias that moved to another
        version): the new weights load beside the old under their own PEFT name, the name switches in
        one step, and rows already decoding finish on the old adapter before it is deleted."""
        with self._registry_lock:
            old = self.models.get(name)
        if old is None or old.kind != "adapter":
            raise UnknownModelError(f"no adapter named '{name}' is served")
        if source.kind != "adapter":
            raise ModelError(
                f"{name}: version {source.version} is a complete model, and a running server swaps adapters of its base only",
                hint="serve that version with its own server (or restart this one on it)",
            )
        self._swaps += 1
        served = self._attach(source, f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}__swap{self._swaps}")
        served.name = name
        with self._registry_lock:
            self.models[name] = served
            old.retiring = True
            self._retired.append(old)
        self._drop_retired()
        return served

    def _attach(self, source: Source, adapter_name: str) -> ServedModel:
        """Load the adapter of `source` into the model as PEFT adapter `adapter_name` (not yet served)."""
        from tunekit.models.trained import attach_adapter, check_adapter_dir
        from tunekit.serve.sources import same_base

        if not same_base(source.base, self.base_source.base, allow_pickle=self.base_source.allow_pickle):
            raise ModelError(
                f"adapter '{source.name}' was trained on '{source.base}', but this server's base model is '{self.base_source.base}'",
                hint="serve adapters of one base model together; start another server for the other base",
            )
        adapter_dir = Path(source.path)
        check_adapter_dir(adapter_dir, allow_pickle=source.allow_pickle)
        tokenizer = self._adapter_tokenizer(adapter_dir)
        with self._model_lock:
            self.model = attach_adapter(
                self.model, adapter_dir, self.base_source.name, name=adapter_name, allow_pickle=source.allow_pickle
            )
            self.model.eval()
            self._adapter_changes += 1
        return ServedModel(source.name, "adapter", str(adapter_dir), self.base_source.name, adapter_name, tokenizer,
                           source.system_prompt, version=source.version, follows=source.follows)

    def _adapter_tokenizer(self, adapter_dir: Path):
        """The adapter's own tokenizer when training saved one (its chat template wins); it must share the base's vocabulary."""
        from tunekit.models import load_tokenizer
        from tunekit.models.trained import tokenizer_source

        source = tokenizer_source(adapter_dir, self.base_source.path)
        if source == self.base_source.path:
            return self.tokenizer
        tokenizer = load_tokenizer(source, trust_remote_code=self.base_source.trust_remote_code)
        if len(tokenizer) != len(self.tokenizer):
            raise ModelError(
                f"the tokenizer saved with {adapter_dir} has {len(tokenizer)} tokens, the base's has {len(self.tokenizer)}",
                hint="an adapter trained with added tokens needs its own server (serve its merged export)",
            )
        return tokenizer

    def remove_adapter(self, name: str) -> None:
        """Stop serving an adapter; rows already decoding on it finish first, then its weights go."""
        with self._registry_lock:
            served = self.models.get(name)
            if served is None or served.kind != "adapter":
                raise UnknownModelError(f"no adapter named '{name}' is served" + (" (it is the base model)" if served else ""))
            del self.models[name]
            served.retiring = True
            self._retired.append(served)
        self._drop_retired()

    def _drop_retired(self) -> None:
        with self._registry_lock:
            gone = [m for m in self._retired if m.in_flight == 0]
            self._retired = [m for m in self._retired if m.in_flight > 0]
        for served in gone:
            with self._model_lock:
                self.model.delete_adapter(served.adapter)
                self._adapter_changes += 1

    def close(self) -> None:
        self._closed = True
        self._pending.put(None)  # wakes the scheduler
        self._thread.join(timeout=10)

    # ------------------------------------------------------------ requests

    @property
    def name(self) -> str:
        """The base model's id (the first entry of /v1/models)."""
        return self.base_source.name

    @property
    def source(self) -> str:
        adapters = [m.root for m in self.models.values() if m.kind == "adapter"]
        return " + ".join([self.base_source.path, *(f"adapter {a}" for a in adapters)])

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)

    def _eos_ids(self) -> list[int]:
        from tunekit.models import end_of_turn_ids

        return end_of_turn_ids(self.tokenizer, self.model.generation_config)

    def served(self, name: str) -> ServedModel:
        with self._registry_lock:
            served = self.models.get(name)
        if served is None:
            raise UnknownModelError(f"The model `{name}` does not exist. This server serves: {', '.join(self.models)}")
        return served

    def encode_chat(self, messages: list[dict], model: str | None = None) -> list[int]:
        """Token ids of the conversation under the model's chat template, ready for the answer; the
        model's system prompt goes first when the conversation has none."""
        from jinja2 import TemplateError

        served = self.served(model or self.name)
        if served.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": served.system_prompt}, *messages]
        try:
            ids = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {exc}") from None
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def submit(
        self, model: str, prompt: list[int], sampling: Sampling, *, n: int = 1, loop: asyncio.AbstractEventLoop | None = None
    ) -> Generation:
        """Queue a request for `model` (an id from `models`); its events arrive on the Generation."""
        import torch

        limit = self.context_length
        if limit is not None and len(prompt) + sampling.max_tokens > limit:
            raise PromptTooLongError(
                f"this model's maximum context length is {limit} tokens, but {len(prompt) + sampling.max_tokens} were requested "
                f"({len(prompt)} in the messages, {sampling.max_tokens} in the completion); shorten the messages or lower max_tokens"
            )
        with self._registry_lock:
            served = self.models.get(model)
            if served is None:
                raise UnknownModelError(f"The model `{model}` does not exist. This server serves: {', '.join(self.models)}")
            served.in_flight += 1
        gen = Generation(served, len(prompt), n, loop)
        for index in range(n):
            generator = None
            if sampling.temperature > 0:
                generator = torch.Generator(device=self.model.device)
                generator.manual_seed(sampling.seed + index if sampling.seed is not None else int(torch.randint(0, 2**62, (1,))))
            self.queue_depth += 1
            self._pending.put(_Row(gen, index, prompt, served.adapter, sampling, generator))
        return gen

    def chat(self, messages: list[dict], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None, model: str | None = None) -> Completion:
        """Answer one conversation and wait for it (greedy when temperature is 0)."""
        name = model or self._default_model()
        gen = self.submit(name, self.encode_chat(messages, name), Sampling(max_tokens, temperature, top_p, stop, seed))
        for _ in gen.events():
            pass
        return gen.completions()[0]

    def _default_model(self) -> str:
        """The one adapter when exactly one is served (a run), else the base."""
        adapters = [m.name for m in self.models.values() if m.kind == "adapter"]
        return adapters[0] if len(adapters) == 1 else self.name

    # ------------------------------------------------------------ scheduling

    def _take(self, block: bool) -> _Row | None:
        try:
            row = self._pending.get(block=block)
        except queue.Empty:
            return None
        if row is not None:
            self.queue_depth -= 1
        return row

    def _schedule(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._closed:
                first = self._take(block=True)
                if first is None:
                    continue
                rows = [first]
                deadline = time.monotonic() + self.batch_wait_s
                while len(rows) < self.max_batch_size:
                    row = self._take(block=False)
                    if row is None:
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(0.001)
                        continue
                    rows.append(row)
                try:
                    self._decode(rows)
                except Exception as exc:  # a failed batch fails its requests, not the server
                    for row in rows:
                        if not row.done:
                            self._finish_row(row, None)
                            row.gen._fail(exc)
                self._drop_retired()

    def _forward(self, input_ids, attention_mask, position_ids, cache, adapters: list[str]):
        from peft import PeftModel

        extra = {"adapter_names": adapters} if isinstance(self.model, PeftModel) else {}
        with self._model_lock:
            if extra:
                self._stacks.refresh(self.model, self._adapter_changes)  # tunekit.serve.lora_batch
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1, **extra,
            )
        return out.logits[:, -1, :].float()

    def _prefill(self, rows: list[_Row]):
        """Cache, attention mask, next positions and last logits of `rows`' prompts, left-padded together."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        width = max(len(r.prompt) for r in rows)
        ids = torch.tensor([[self.pad_token_id] * (width - len(r.prompt)) + r.prompt for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, [r.adapter for r in rows])
        return cache, mask, positions[:, -1] + 1, logits

    def _decode(self, rows: list[_Row]) -> None:
        """Decode `rows` to the end, letting waiting requests join between steps.

        At the top of each round every row's next-token logits are ready and the cache holds every
        token fed so far; the mask covers the cache (0 on left padding)."""
        import torch

        rows = [r for r in rows if not self._skip_cancelled(r)]
        if not rows:
            return
        cache, mask, next_pos, logits = self._prefill(rows)
        while rows:
            tokens = self._pick(logits, rows)
            for row, token in zip(rows, tokens):
                self._advance(row, token)
            keep = [i for i, r in enumerate(rows) if not r.done]
            if len(keep) < len(rows) and keep:
                index = torch.tensor(keep, device=mask.device, dtype=torch.long)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
            rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
            if rows:  # feed each running row its picked token
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                step = torch.tensor(tokens, device=mask.device).unsqueeze(1)
                logits = self._forward(step, mask, next_pos.unsqueeze(1), cache, [r.adapter for r in rows])
                next_pos = next_pos + 1
            joined = self._joiners(len(rows))
            if not joined:
                continue
            new_cache, new_mask, new_pos, new_logits = self._prefill(joined)
            if rows:
                cache, mask = _merge_caches(cache, mask, new_cache, new_mask)
                next_pos, logits = torch.cat([next_pos, new_pos]), torch.cat([logits, new_logits])
            else:
                cache, mask, next_pos, logits = new_cache, new_mask, new_pos, new_logits
            rows = rows + joined

    def _joiners(self, active: int) -> list[_Row]:
        """Waiting rows that fit in the running batch (continuous batching)."""
        joined = []
        while active + len(joined) < self.max_batch_size:
            row = self._take(block=False)
            if row is None:
                break
            if not self._skip_cancelled(row):
                joined.append(row)
        return joined

    def _skip_cancelled(self, row: _Row) -> bool:
        if row.gen.cancelled:
            self._finish_row(row, "cancelled")
            return True
        return False

    def _pick(self, logits, rows: list[_Row]) -> list[int]:
        """Next token per row: argmax for greedy rows, nucleus sampling with the row's generator otherwise."""
        import torch

        picks = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            s = row.sampling
            if s.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs > s.top_p
                sorted_probs[outside] = 0.0
                picks[i] = int(order[torch.multinomial(sorted_probs, 1, generator=row.generator)])
            else:
                picks[i] = int(torch.multinomial(probs, 1, generator=row.generator))
        return picks

    def _advance(self, row: _Row, token: int) -> None:
        """Add a picked token to a row; emit the text that is final; end the row on eos, a stop string,
        its budget or a cancelled request."""
        if row.gen.cancelled:
            self._finish_row(row, "cancelled")
            return
        row.tokens.append(token)
        ended_on_eos = token in self.eos_token_ids
        body = row.tokens[:-1] if ended_on_eos else row.tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = stop_cut(text, row.sampling.stop)
        if cut >= 0:
            self._emit(row, text[:cut], "stop")
        elif ended_on_eos:
            self._emit(row, text, "stop")
        elif len(row.tokens) >= row.sampling.max_tokens:
            self._emit(row, text, "length")
        else:
            safe = safe_length(text, row.sampling.stop)
            if safe > row.sent:
                row.gen._push(Event(row.index, text[row.sent : safe], None, len(row.tokens)))
                row.sent = safe

    def _emit(self, row: _Row, text: str, finish: str) -> None:
        piece = text[row.sent :] if len(text) >= row.sent else ""
        row.sent = len(text)
        row.gen._push(Event(row.index, piece, finish, len(row.tokens)))
        self._finish_row(row, finish)

    def _finish_row(self, row: _Row, finish: str | None) -> None:
        """Mark a row done; a cancelled row ends its choice without text. The last row of a request
        releases its model (an adapter being unloaded waits for this)."""
        if row.done:
            return
        row.done = True
        if finish == "cancelled":
            row.gen._push(Event(row.index, "", "cancelled", len(row.tokens)))
        row.gen._rows_done += 1
        if row.gen._rows_done == row.gen.n:
            with self._registry_lock:
                row.gen.model.in_flight -= 1


def _merge_caches(cache, mask, other, other_mask):
    """Stack two KV caches (and their masks) along the batch, left-padding the shorter one (masked)."""
    import torch

    width = max(mask.shape[1], other_mask.shape[1])

    def pad(t, n):  # keys/values: [batch, heads, seq, dim]; pad seq on the left
        return t if n == 0 else torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)

    a, b = width - mask.shape[1], width - other_mask.shape[1]
    for layer, other_layer in zip(cache.layers, other.layers):
        layer.keys = torch.cat([pad(layer.keys, a), pad(other_layer.keys, b)], dim=0)
        layer.values = torch.cat([pad(layer.values, a), pad(other_layer.values, b)], dim=0)
    merged_mask = torch.cat(
        [torch.cat([mask.new_zeros((mask.shape[0], a)), mask], 1), torch.cat([other_mask.new_zeros((other_mask.shape[0], b)), other_mask], 1)]
    )
    return cache, merged_mask
