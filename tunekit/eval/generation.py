"""Answer chat prompts with a local model (batched, left-padded) or an OpenAI-compatible endpoint.

Both return the same `Generations`: one output, latency and token count per prompt, in the
prompts' order, so every metric is computed by the same code whatever produced the answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunekit.console import console, progress
from tunekit.errors import TunekitError


@dataclass
class Generations:
    outputs: list[str]
    seconds: float  # wall time of the generation loop (warm-up excluded)
    new_tokens: int
    latency_s: list[float] = field(default_factory=list)  # per example; a local batch's time is shared by its rows
    lengths: list[int] = field(default_factory=list)  # generated tokens per example
    # Per example, as OpenAI names it: "stop" (the answer ended) or "length" (cut at max_new_tokens).
    finish: list[str] = field(default_factory=list)
    cached: bool = False  # read from tunekit.eval.answer_cache (the timings are those of the run that made them)

    def truncated(self) -> list[int]:
        """Indices of the answers that were cut at the token budget."""
        return [i for i, reason in enumerate(self.finish) if reason == "length"]


@dataclass
class Decoding:
    max_new_tokens: int
    batch_size: int
    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    @property
    def name(self) -> str:
        return "greedy" if self.temperature == 0 else f"sampling (temperature {self.temperature}, seed {self.seed})"


# A common start of every prompt (the system prompt, the template's header) is computed once and its
# attention keys/values reused by every batch; shorter shared starts are not worth the copy.
MIN_SHARED_PREFIX = 8


def generate(model, tokenizer, prompts: list[list[dict]], decoding: Decoding, *, label: str) -> Generations:
    """Completions for chat prompts, batched with left padding, in the prompts' order.

    The tokens all prompts start with are run through the model once; each batch starts from a copy
    of that cache (the prompts' own tokens follow, padded between the two, so positions and masked
    attention are those of each prompt alone)."""
    import torch

    from tunekit.models import end_of_turn_ids

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    # Batch prompts of similar length together: less padding, same results (padding is masked).
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    outputs, latency, produced = [""] * len(texts), [0.0] * len(texts), [0] * len(texts)
    finish = ["stop"] * len(texts)
    if not texts:
        return Generations([], 0.0, 0)
    stops = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
    with torch.inference_mode():
        _complete(model, tokenizer, [ids[order[0]]], Decoding(2, 1), stops)  # warm-up, kept out of the timing
    if decoding.temperature > 0:
        torch.manual_seed(decoding.seed)
    started = time.perf_counter()
    with progress(label, len(texts)) as advance, torch.inference_mode():
        prefix = _shared_prefix(model, ids)
        for start in range(0, len(order), decoding.batch_size):
            batch = order[start : start + decoding.batch_size]
            t0 = time.perf_counter()
            completions = _complete(model, tokenizer, [ids[i] for i in batch], decoding, stops, prefix)
            share = (time.perf_counter() - t0) / len(batch)
            for row, index in enumerate(batch):
                generated = completions[row].tolist()
                tokens = _until_stop(generated, stops)
                produced[index], latency[index] = len(tokens), share
                finish[index] = "length" if len(tokens) == len(generated) and len(tokens) >= decoding.max_new_tokens else "stop"
                outputs[index] = tokenizer.decode(tokens, skip_special_tokens=True)
            advance(len(batch))
    return Generations(outputs, time.perf_counter() - started, sum(produced), latency, produced, finish)


def _shared_prefix(model, ids: list[list[int]]):
    """(the token ids every prompt starts with, their KV cache), or None when they share too little.
    Every prompt keeps at least one token of its own, so generation starts from a fresh position."""
    import torch

    first, longest = ids[0], min(len(i) for i in ids) - 1
    length = next((k for k in range(longest) if any(row[k] != first[k] for row in ids)), max(longest, 0))
    if length < MIN_SHARED_PREFIX:
        return None
    out = model(input_ids=torch.tensor([first[:length]], device=model.device), use_cache=True)
    return first[:length], out.cache  # transformers 5 names it `cache` (formerly past_key_values)


def _complete(model, tokenizer, rows: list[list[int]], decoding: Decoding, stops: list[int], prefix=None):
    """Token ids generated after each prompt. Rows are padded on the left of their own tokens (after
    the shared prefix, when there is one), so every row ends where generation starts."""
    import copy

    import torch

    pad = tokenizer.pad_token_id
    head, cache = prefix if prefix is not None else ([], None)
    own = [row[len(head) :] for row in rows]
    width = max(len(o) for o in own)
    input_ids = [head + [pad] * (width - len(o)) + o for o in own]
    mask = [[1] * len(head) + [0] * (width - len(o)) + [1] * len(o) for o in own]
    extra = {}
    if cache is not None:
        extra["cache"] = copy.deepcopy(cache)
        extra["cache"].batch_repeat_interleave(len(rows))
    sampling = {"do_sample": True, "temperature": decoding.temperature} if decoding.temperature > 0 else {"do_sample": False}
    input_ids = torch.tensor(input_ids, device=model.device)
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=torch.tensor(mask, device=model.device),
        **extra,
        **sampling,
        max_new_tokens=decoding.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=stops,
    )
    return generated[:, input_ids.shape[1] :]


def _until_stop(tokens: list[int], stops: list[int]) -> list[int]:
    # A finished row is padded (pad == eos for many chat models) while others keep generating.
    ends = [i for i, token in enumerate(tokens) if token in stops]
    return tokens[: ends[0]] if ends else tokens


def generate_endpoint(client, model_name: str, prompts: list[list[dict]], decoding: Decoding, *, label: str) -> Generations:
    """One chat completion per prompt from an OpenAI-compatible server (a GGUF runner, a hosted model...)."""
    import openai

    outputs, latency, produced, finish = [], [], [], []
    started = time.perf_counter()
    with progress(label, len(prompts)) as advance:
        for prompt in prompts:
            t0 = time.perf_counter()
            try:
                response = client.chat.completions.create(
                    model=model_name,
                    messages=prompt,
                    max_tokens=decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    seed=decoding.seed,
                )
            except openai.OpenAIError as exc:
                raise TunekitError(
                    f"eval.endpoint: the request to {client.base_url} for model '{model_name}' failed: {exc}",
                    hint="check that the server is running and serves that model (eval.endpoint.model, default: the run name)",
                ) from None
            latency.append(time.perf_counter() - t0)
            outputs.append(response.choices[0].message.content or "")
            produced.append(response.usage.completion_tokens if response.usage else 0)
            finish.append("length" if response.choices[0].finish_reason == "length" else "stop")
            advance(1)
    return Generations(outputs, time.perf_counter() - started, sum(produced), latency, produced, finish)


def reference_nll(model, tokenizer, prompts: list[list[dict]], references: list[str], *, batch_size: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each reference answer after its prompt.

    The answer tokens are those the chat template adds for the assistant turn, end-of-turn
    included, exactly the tokens SFT trains on.
    """
    import torch

    rows = []
    for prompt, reference in zip(prompts, references):
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reference}], tokenize=False)
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        rows.append((full_ids, len(head_ids)))
    results = []
    pad = tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, head_len) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
                labels[row, head_len : len(ids)] = torch.tensor(ids[head_len:])
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            target = labels[:, 1:].to(model.device)
            picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            valid = target != -100
            for row in range(len(batch)):
                results.append((float(-(picked[row][valid[row]]).sum()), int(valid[row].sum())))
    return results
