"""HF merged model vs the F16 GGUF: the same chats, greedy, on both sides.

The HF side is the merged directory loaded with plain transformers (its tokenizer, chat template and
generation config). The GGUF side is llama.cpp reading only the file: its embedded chat template,
its tokenizer and its end-of-generation tokens. A dropped or altered template shows as different
prompt tokens; a wrong eos as a stop token llama.cpp does not know or as answers that run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunekit.export.llamacpp import chat_greedy, end_of_generation, open_gguf, prompt_token_ids, render_prompt
from tunekit.export.parity import first_difference, free_memory, prompt_label

HF_BATCH_SIZE = 16  # eval's default; on the example 11.2 s for 50 answers vs 17.1 s at 8, the same answers


@dataclass
class _HfAnswer:
    prompt_ids: list[int]
    text: str
    stopped: bool  # ended on an end-of-turn token (not at max_new_tokens)


def _hf_side(merged_dir: Path, conversations: list, max_new_tokens: int):
    """The merged model's greedy answers, batched as eval batches them (tunekit.eval.generation: left
    padding, the shared prompt start computed once; the same answers as one prompt at a time)."""
    from tunekit.eval.generation import Decoding, generate
    from tunekit.models import load_model, load_tokenizer
    from tunekit.models.loading import end_of_turn_ids

    tokenizer = load_tokenizer(str(merged_dir))
    model = load_model(str(merged_dir), dtype="float32").eval()
    generations = generate(model, tokenizer, conversations, Decoding(max_new_tokens, HF_BATCH_SIZE), label="parity: merged model")
    end_ids = end_of_turn_ids(tokenizer, model.generation_config)
    del model
    free_memory()
    answers = []
    for conversation, text, finish in zip(conversations, generations.outputs, generations.finish):
        prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        answers.append(_HfAnswer(tokenizer(prompt, add_special_tokens=False)["input_ids"], text, finish == "stop"))
    return tokenizer, answers, end_ids


def _stop_tokens(llm, metadata: dict, end_ids: list[int], tokenizer) -> dict:
    eog = end_of_generation(llm, end_ids)
    gguf_eos = metadata.get("eos_token_id")
    return {
        "hf_end_of_turn": [tokenizer.convert_ids_to_tokens(i) for i in end_ids],
        "gguf_eos": tokenizer.convert_ids_to_tokens(gguf_eos) if gguf_eos is not None else None,
        "gguf_eos_is_end_of_turn": gguf_eos in end_ids,
        "llama_cpp_stops_at": [tokenizer.convert_ids_to_tokens(i) for i, stops in eog.items() if stops],
        "ok": gguf_eos in end_ids and all(eog.values()),
    }


def check_gguf_parity(merged_dir: Path, gguf_file: Path, prompts: list, max_new_tokens: int, min_identical_share: float) -> dict:
    """Greedy answers of the merged HF model and of `gguf_file` (through llama.cpp) to `prompts`.

    Returns {n, identical, identical_share, template_identical, prompts_identical, stop_tokens, gate,
    passed, details}; each detail has the HF and GGUF answers and the first divergence (token index
    in the HF tokenization of both answers, None when identical).
    """
    from tunekit.export.gguf import read_gguf_metadata

    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    tokenizer, reference, end_ids = _hf_side(Path(merged_dir), conversations, max_new_tokens)
    metadata = read_gguf_metadata(Path(gguf_file))
    details = []
    with open_gguf(Path(gguf_file), n_ctx=4096) as llm:
        stop_tokens = _stop_tokens(llm, metadata, end_ids, tokenizer)
        for conversation, ref in zip(conversations, reference):
            prompt = render_prompt(llm, conversation)
            prompt_same = prompt is not None and prompt_token_ids(llm, prompt) == ref.prompt_ids
            text, finish = chat_greedy(llm, conversation, max_new_tokens) if prompt is not None else ("", "no template")
            hf_stopped = ref.stopped
            hf_ids = tokenizer(ref.text, add_special_tokens=False)["input_ids"]
            gguf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            first = first_difference(hf_ids, gguf_ids)
            same_stop = hf_stopped == (finish == "stop")
            details.append(
                {
                    "prompt": prompt_label(conversation),
                    "identical": prompt_same and first is None and same_stop,
                    "prompt_identical": prompt_same,
                    "first_divergence": first,
                    "hf": ref.text,
                    "gguf": text,
                    "hf_stopped": hf_stopped,
                    "gguf_finish": finish,
                }
            )
    identical = sum(d["identical"] for d in details)
    share = identical / len(details) if details else 1.0
    template_identical = metadata["chat_template"] == tokenizer.chat_template
    prompts_identical = all(d["prompt_identical"] for d in details)
    divergences = [d["first_divergence"] for d in details if d["first_divergence"] is not None]
    return {
        "gguf": str(gguf_file),
        "n": len(details),
        "identical": identical,
        "identical_share": share,
        "template_identical": template_identical,
        "prompts_identical": prompts_identical,
        "stop_tokens": stop_tokens,
        "first_divergence_positions": divergences,
        "max_new_tokens": max_new_tokens,
        # Answers still going at the budget: parity then compares their first max_new_tokens tokens only.
        "cut_at_max_new_tokens": {"hf": sum(not d["hf_stopped"] for d in details), "gguf": sum(d["gguf_finish"] == "length" for d in details)},
        "gate": f"chat template and stop tokens identical, and at least {min_identical_share:.0%} of greedy answers identical",
        "passed": template_identical and prompts_identical and stop_tokens["ok"] and share >= min_identical_share,
        "details": details,
    }


def gguf_parity_failure_message(report: dict) -> str:
    """What went wrong, most basic cause first."""
    head = f"the F16 GGUF does not answer like the merged model ({report['identical']}/{report['n']} greedy answers identical)"
    if not report["template_identical"] or not report["prompts_identical"]:
        return f"{head}: its embedded chat template differs from the merged model's, so prompts are encoded differently"
    stops = report["stop_tokens"]
    if not stops["ok"]:
        return (
            f"{head}: its stop tokens differ (GGUF eos {stops['gguf_eos']!r}, llama.cpp stops at {stops['llama_cpp_stops_at']}; "
            f"the merged model ends a turn with {stops['hf_end_of_turn']})"
        )
    bad = next(d for d in report["details"] if not d["identical"])
    return (
        f"{head}; gate: {report['gate']}\n  prompt {bad['prompt']!r} (first divergence at token {bad['first_divergence']}):\n"
        f"    merged: {bad['hf']!r}\n    GGUF:   {bad['gguf']!r}"
    )
