"""Tokenize chats with the model's own chat template and mark the tokens the loss is taken on.

The loss covers every assistant turn, from its first content token through its end-of-turn
token (so the model learns to stop), and nothing else: not the system prompt, not user turns,
not the role headers the template adds, not the newline after the end-of-turn token.

Spans are found on the rendered *text* and mapped to tokens with the tokenizer's offsets, so
BPE merges across a turn boundary cannot shift the mask. Templates that have no
`{% generation %}` markers (most of them, SmolLM2's included) work the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.errors import DataError


@dataclass
class TokenizedChat:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the token is trained on

    @property
    def trained_tokens(self) -> int:
        return sum(self.assistant_masks)


def _render(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the [start, end) character span of every assistant turn.

    A span starts where the template's generation prompt ends and stops right after the
    end-of-turn token (the tokenizer's eos), or at the end of the turn's rendering when the
    template has no such token.
    """
    text = _render(tokenizer, messages, add_generation_prompt=False)
    eot = tokenizer.eos_token or ""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (text.startswith(prefix) and text.startswith(through)):
            # The template rewrites earlier turns depending on later ones (e.g. drops reasoning
            # from past turns); spans measured on prefixes would be wrong, so refuse clearly.
            raise DataError(
                "the chat template renders earlier turns differently as the conversation grows; "
                "tunekit cannot locate assistant turns for the loss mask",
                hint="use single-turn examples with this model, or a template without history rewriting",
            )
        start, end = len(prefix), len(through)
        if eot:
            cut = text.find(eot, start, end)
            if cut != -1:
                end = cut + len(eot)
        spans.append((start, end))
    return text, spans


def tokenize_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> TokenizedChat:
    """Token ids of the whole chat and the assistant-only loss mask, optionally truncated."""
    text, spans = assistant_char_spans(tokenizer, messages)
    # Assistant turns with `weight: 0` (OpenAI's chat format) are context only: no loss on them.
    weights = [m.get("weight", 1) for m in messages if m["role"] == "assistant"]
    spans = [span for span, weight in zip(spans, weights) if weight != 0]
    # The template already wrote any BOS/special tokens into the text: adding them again would
    # double them.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    mask = []
    for token_start, token_end in encoding["offset_mapping"]:
        inside = any(token_start >= s and token_end <= e and token_end > token_start for s, e in spans)
        mask.append(1 if inside else 0)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return TokenizedChat(input_ids=ids, assistant_masks=mask)
