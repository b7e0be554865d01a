"""Check that a merged export computes what base + adapter computes.

Both sides decode the same chat prompts greedily; the merged side is loaded fresh from disk with
its own tokenizer and generation config, exactly as a user would load it. Logits are compared
teacher-forced on one reference sequence per prompt (the prompt + float32 base + adapter's
continuation), so one early rounding flip does not hide how close the rest is.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from tunekit.data.formats import with_system_prompt
from tunekit.runs import RunPaths, read_jsonl

# float32 merging reorders a few float operations (W x + s B A x  vs  (W + s B A) x): logits move by
# ~1e-6. 1e-3 leaves room for deep models while any real mistake (missing layer, wrong scale,
# wrong tokenizer) moves logits by far more.
FLOAT32_LOGIT_TOLERANCE = 1e-3
# bf16/fp16 exports: neither token equality nor a logit tolerance is a usable gate. bf16 keeps ~3
# significant digits, so base + adapter in bf16 is itself ~0.2-0.3 logits (rms) away from float32, and
# a greedy near-tie flips either way: measured on SmolLM2-135M with random LoRAs, a correct bf16 merge
# agreed with bf16 base + adapter on 95-97% of top-1 tokens, no better than the *unmerged* base did.
# The gate is therefore relative to that noise floor: against float32 base + adapter, the merged model
# may be at most this many times as far off as base + adapter computed in the same dtype (measured:
# 0.6-1.6x in bf16, ~1x in fp16, hence 2.5 with some margin; a missing or wrong merge shows up as soon
# as the adapter's effect exceeds the dtype's rounding noise). Token agreement and the logit diff
# are reported, not gated.
HALF_PRECISION_MAX_ERROR_RATIO = 2.5
DEFAULT_MAX_NEW_TOKENS = 32

FALLBACK_PROMPTS = [
    "Hello! Who are you?",
    "Summarise in one sentence: the meeting moved from Monday to Wednesday at 10am.",
    'Reply with a JSON object that has the key "status" set to "ok".',
]


def parity_prompts(run: RunPaths, system_prompt: str | None = None, count: int = 3) -> list[list[dict]]:
    """The first `count` prompts (chat without the final answer, or a preference pair's prompt) of
    the test split, else of the validation split, else fixed prompts."""
    for name in ("test", "val"):
        path = run.split(name)
        rows = read_jsonl(path)[:count] if path.is_file() else []
        prompts = [_prompt_of(row) for row in rows]
        prompts = [p for p in prompts if p]
        if prompts:
            break
    else:
        prompts = [[{"role": "user", "content": text}] for text in FALLBACK_PROMPTS[:count]]
    # Same rule as data preparation and eval: the recipe's system prompt fills in where a chat has none.
    return [with_system_prompt(p, system_prompt) for p in prompts]


def _prompt_of(row: dict) -> list[dict] | None:
    if "messages" in row:
        return row["messages"][:-1] if len(row["messages"]) > 1 else None
    return row.get("prompt") or None  # a prepared preference row: its prompt messages; text rows have none


@dataclass
class Decoded:
    prompt_ids: list[int]
    generated: list[int]
    text: str


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def greedy_decode(model, tokenizer, conversation: list[dict], max_new_tokens: int, eos_token_id) -> Decoded:
    """The greedy answer to `conversation` through the tokenizer's chat template (eos None: the
    model's generation config decides where to stop)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
    kwargs = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    output = model.generate(**encoded, **kwargs)
    prompt_ids = encoded["input_ids"][0].tolist()
    generated = output[0, len(prompt_ids) :].tolist()
    return Decoded(prompt_ids, generated, tokenizer.decode(generated, skip_special_tokens=True))


def _logits(model, ids: list[int]):
    import torch

    return model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu()


def free_memory() -> None:
    """Release a model that was just deleted before the next one loads (GPU memory too)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (the shorter one's length when one is a prefix
    of the other), None when they are equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def prompt_label(conversation: list[dict]) -> str:
    """How a parity report names a conversation: its last user message."""
    users = [m["content"] for m in conversation if m["role"] == "user"]
    return users[-1] if users else conversation[-1]["content"]


@dataclass
class _Pass:
    """One model's greedy decodes, and its logits teacher-forced on the float32 reference sequences."""

    decoded: list[Decoded]
    logits: list


def _run_pass(model, tokenizer, conversations, max_new_tokens: int, eos, sequences=None) -> _Pass:
    decoded = [greedy_decode(model, tokenizer, c, max_new_tokens, eos) for c in conversations]
    sequences = sequences or [d.prompt_ids + d.generated for d in decoded]
    return _Pass(decoded, [_logits(model, s) for s in sequences])


def _reference_pass(base_path, adapter_dir, tokenizer, conversations, max_new_tokens, dtype, sequences, load) -> _Pass:
    from tunekit.models import load_model
    from tunekit.models.loading import end_of_turn_ids
    from tunekit.models.trained import attach_adapter

    base = load_model(base_path, dtype=dtype, **load).to(_device())
    model = attach_adapter(base, adapter_dir, base_path, allow_pickle=load["allow_pickle"]).eval()
    # The reference is told explicitly where a turn ends; the merged side must know it from its own
    # generation_config, which is what plain `generate` on the export uses.
    eos = end_of_turn_ids(tokenizer, base.generation_config)
    result = _run_pass(model, tokenizer, conversations, max_new_tokens, eos, sequences)
    del model, base  # one model in memory at a time
    free_memory()
    return result


def check_parity(
    base_path: str,
    adapter_dir: Path,
    merged_dir: Path,
    prompts: list,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Greedy-decode `prompts` (chats, or plain strings taken as one user message) with base + adapter
    and with the merged model loaded from `merged_dir` in `dtype` (the export's dtype); compare
    the generated tokens and the logits.

    Returns {prompts, n, identical, template_identical, max_abs_logit_diff, top1_agreement,
    merged_error_rms, unmerged_error_rms, error_ratio, dtype, max_new_tokens, gate, passed, details, device}.
    For half-precision exports base + adapter also runs in float32 (peak memory: the model in float32).
    """
    import torch

    from tunekit.models.trained import tokenizer_source
    from tunekit.models import load_model, load_tokenizer

    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    load = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    with torch.inference_mode():
        tokenizer = load_tokenizer(tokenizer_source(Path(adapter_dir), base_path), trust_remote_code=trust_remote_code)
        exact = _reference_pass(base_path, adapter_dir, tokenizer, conversations, max_new_tokens, "float32", None, load)
        sequences = [d.prompt_ids + d.generated for d in exact.decoded]
        same_dtype = exact
        if dtype != "float32":
            same_dtype = _reference_pass(base_path, adapter_dir, tokenizer, conversations, max_new_tokens, dtype, sequences, load)
        merged_tokenizer = load_tokenizer(str(merged_dir), trust_remote_code=trust_remote_code)
        model = load_model(str(merged_dir), dtype=dtype, **load).to(_device()).eval()
        merged = _run_pass(model, merged_tokenizer, conversations, max_new_tokens, None, sequences)
        del model
        free_memory()
    report = _compare(conversations, exact, same_dtype, merged, dtype, max_new_tokens)
    report["device"] = _device()
    return report


def _rms(differences) -> float:
    squares = sum(float(d.double().pow(2).sum()) for d in differences)
    count = sum(d.numel() for d in differences)
    return (squares / count) ** 0.5 if count else 0.0


def _compare(conversations, exact: _Pass, same_dtype: _Pass, merged: _Pass, dtype: str, max_new_tokens: int) -> dict:
    details, agree, positions = [], 0, 0
    for index, conv in enumerate(conversations):
        ref, mer = same_dtype.decoded[index], merged.decoded[index]
        ref_logits, mer_logits = same_dtype.logits[index], merged.logits[index]
        agree += int((ref_logits.argmax(-1) == mer_logits.argmax(-1)).sum())
        positions += ref_logits.shape[0]
        template_same = ref.prompt_ids == mer.prompt_ids
        first = first_difference(ref.generated, mer.generated)
        details.append(
            {
                "prompt": prompt_label(conv),
                "identical": template_same and first is None,
                "template_identical": template_same,
                "first_difference": first,
                "reference": ref.text,
                "merged": mer.text,
                "max_abs_logit_diff": float((ref_logits - mer_logits).abs().max()),
            }
        )
    identical = sum(d["identical"] for d in details)
    template_identical = all(d["template_identical"] for d in details)
    worst = max((d["max_abs_logit_diff"] for d in details), default=0.0)
    report = {
        "prompts": [d["prompt"] for d in details],
        "n": len(details),
        "identical": identical,
        "template_identical": template_identical,
        "max_abs_logit_diff": worst,
        "top1_agreement": agree / positions if positions else 1.0,
        "merged_error_rms": None,
        "unmerged_error_rms": None,
        "error_ratio": None,
        "dtype": dtype,
        "max_new_tokens": max_new_tokens,
    }
    if dtype == "float32":
        report["gate"] = f"all generations identical and max |logit diff| <= {FLOAT32_LOGIT_TOLERANCE:g}"
        report["passed"] = identical == len(details) and worst <= FLOAT32_LOGIT_TOLERANCE
    else:
        merged_error = _rms([m - e for m, e in zip(merged.logits, exact.logits)])
        unmerged_error = _rms([u - e for u, e in zip(same_dtype.logits, exact.logits)])
        ratio = merged_error / unmerged_error if unmerged_error else (0.0 if merged_error == 0 else float("inf"))
        report.update(merged_error_rms=merged_error, unmerged_error_rms=unmerged_error, error_ratio=ratio)
        report["gate"] = (
            f"{dtype}: logit error vs float32 base + adapter at most {HALF_PRECISION_MAX_ERROR_RATIO:g}x "
            f"that of base + adapter in {dtype}, and identical chat templates"
        )
        report["passed"] = template_identical and ratio <= HALF_PRECISION_MAX_ERROR_RATIO
    report["details"] = details
    return report


def parity_failure_message(report: dict) -> str:
    """One readable message naming the first prompt where the merged model goes its own way."""
    ratio = f", error ratio {report['error_ratio']:.2f}" if report.get("error_ratio") is not None else ""
    head = (
        f"merged model does not reproduce base + adapter ({report['identical']}/{report['n']} generations identical, "
        f"max |logit diff| {report['max_abs_logit_diff']:.3g}, top-1 agreement {report['top1_agreement']:.1%}{ratio}; "
        f"gate: {report['gate']})"
    )
    for detail in report["details"]:
        if not detail["identical"]:
            if not detail["template_identical"]:
                return f"{head}\n  prompt {detail['prompt']!r}: the merged tokenizer/chat template encodes it differently"
            return (
                f"{head}\n  prompt {detail['prompt']!r} (first difference at generated token {detail['first_difference']}):\n"
                f"    base + adapter: {detail['reference']!r}\n    merged:         {detail['merged']!r}"
            )
    return head
