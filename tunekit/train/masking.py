"""Tokenize chats with the model's own chat template and mark the tokens the loss is taken on.

The loss covers every assistant turn, from its first content token through its end-of-turn
token (so the model learns to stop), and nothing else: not the system prompt, not user turns,
not the role headers the template adds, not the newline after the end-of-turn token.

Everything is read off the template itself, with no table of model families:

- *Where a reply's content sits* in the rendered chat: render the chat a second time with that
  reply's content swapped for a character found nowhere in the text; the two renders differ
  exactly where the content goes. This holds for templates with or without a generation
  prompt (Mistral's reply follows `[/INST]` directly), templates that trim or pad the content,
  templates that move the system prompt into the first or last user turn (Gemma, Mistral) and
  templates that add an end-of-sequence token only after the final turn.
- *Where the model starts writing*: at the end of the template's generation prompt, which is
  usually the content's start. Where the template writes something between the two (Mistral's
  " " after `[/INST]`, an empty `<think></think>` block), the model has to generate it, so it
  is trained too.
- *What closes a reply*: the text the template writes right after the content both when more
  turns follow and when the reply ends the chat. The end-of-turn marker is the first special
  token of that shared text (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `</s>`);
  when the shared text holds no special token, the shared text up to its trailing whitespace.
  A family table would miss the next template; the tokenizer's eos is wrong for several
  (Llama-3 base tokenizers: `<|end_of_text|>`, Phi-3: `<|endoftext|>` after the whole chat).

Spans are found on the rendered *text* and mapped to tokens with the tokenizer's offsets, so
BPE merges across a turn boundary cannot shift the mask; a token is trained when any of its
characters lies in a span (an end-of-turn token with `rstrip` also covers the newline after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tunekit.errors import DataError

# Unicode private-use code points: templates never write them and real data almost never holds
# them; the probe character is the first one absent from the chat.
_PROBE_RANGE = range(0xE000, 0xF900)


@dataclass
class TokenizedChat:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the token is trained on
    truncated: bool = False  # tokens were cut at max_length

    @property
    def trained_tokens(self) -> int:
        return sum(self.assistant_masks)


@dataclass
class EncodedChat:
    """The whole rendered chat, its tokens with character offsets, and the trained spans."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int]]
    assistant_masks: list[int]


def _render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - a template may raise anything; its own message is the useful part
        raise DataError(
            f"the model's chat template refused a conversation of {len(messages)} message(s): {exc}",
            hint="run `tunekit data prepare` first: it quarantines the rows the template refuses",
        ) from None


def _with_content(messages: list[dict], index: int, content: str) -> list[dict]:
    changed = list(messages)
    changed[index] = {**messages[index], "content": content}
    return changed


def _probe_char(*texts: str) -> str:
    return next(chr(c) for c in _PROBE_RANGE if not any(chr(c) in t for t in texts))


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i, step = 0, 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:  # compare in blocks: chats run to many KB
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, limit: int) -> int:
    i, step = 0, 256
    while i + step <= limit and a[len(a) - i - step : len(a) - i] == b[len(b) - i - step : len(b) - i]:
        i += step
    while i < limit and a[len(a) - 1 - i] == b[len(b) - 1 - i]:
        i += 1
    return i


def _not_as_written(number: int, what: str) -> DataError:
    return DataError(
        f"the chat template {what} message {number} (an assistant reply) in the rendered chat, as templates that "
        "drop reasoning from earlier turns do; tunekit places the loss mask only on replies rendered as written",
        hint="set `weight: 0` on that message to keep it as context only, or split the chat into single-reply examples",
    )


def _content(messages: list[dict], index: int) -> str:
    content = messages[index].get("content")
    if not isinstance(content, str):
        raise DataError(
            f"message {index + 1} (an assistant reply) has {type(content).__name__} content; tunekit trains on text replies",
            hint="run `tunekit data prepare` first: it converts and validates the rows",
        )
    return content


def _located(text: str, swapped: str, probe: str, content: str, number: int) -> tuple[int, int]:
    """[start, end) of the content in `text`, from where `text` and `swapped` (content → probe) differ."""
    if probe not in swapped:
        raise _not_as_written(number, "leaves out")
    start = _common_prefix(text, swapped)
    end = len(text) - _common_suffix(text, swapped, min(len(text), len(swapped)) - start)
    # Templates may trim or pad a reply, never change its words: anything else (reasoning cut from
    # past turns, the content rendered twice) would put the mask on text that is not the reply.
    if text[start:end].strip() != content.strip():
        raise _not_as_written(number, "rewrites the text of")
    return start, end


@lru_cache(maxsize=16)
def _marker_ids(tokenizer, vocab_size: int) -> frozenset[int]:
    """Ids of the tokenizer's added and special tokens (vocab_size keys the cache: it grows when tokens are added)."""
    return frozenset(tokenizer.added_tokens_decoder) | frozenset(tokenizer.all_special_ids)


def _end_of_turn(tokenizer, shared: str) -> tuple[int, int | None]:
    """How much of `shared` (the text every version of the turn ends with) closes the reply, and
    the id of the special token that closes it (None for a plain-text or missing marker)."""
    encoding = tokenizer(shared, add_special_tokens=False, return_offsets_mapping=True)
    markers = _marker_ids(tokenizer, len(tokenizer))
    for token_id, (_, token_end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if token_id in markers:
            return token_end, token_id
    return len(shared.rstrip()), None  # a template whose turns end in plain text, e.g. "### End"


def _lead_in(tokenizer, messages: list[dict], index: int, alone: str, probe: str) -> str:
    """What the model generates between the end of the prompt and the reply's content.

    Usually nothing: the generation prompt ends with the role header. Templates without one
    write their separator as part of the reply instead (Mistral: `[/INST]` + " " + reply), and
    some write a fixed preamble (an empty `<think></think>` block); the model must generate it.
    """
    if index == 0:
        return ""
    prompt = _render(tokenizer, messages[:index], add_generation_prompt=True)
    at = alone.rfind(probe)
    return alone[len(prompt) : at] if at >= len(prompt) and alone.startswith(prompt) else ""


def _turn(tokenizer, messages: list[dict], index: int, text: str) -> tuple[int, int, int | None]:
    content = _content(messages, index)
    probe = _probe_char(text, content)
    swapped = _render(tokenizer, _with_content(messages, index, probe))
    start, content_end = _located(text, swapped, probe, content, index + 1)
    # The same reply when it ends the chat: what the template writes after it there and in `text`
    # alike is the turn's own closing, not the next turn's header.
    last = index == len(messages) - 1
    alone = swapped if last else _render(tokenizer, _with_content(messages[: index + 1], index, probe))
    lead_in = _lead_in(tokenizer, messages, index, alone, probe)
    if lead_in and text[start - len(lead_in) : start] == lead_in:
        start -= len(lead_in)
    after = text[content_end:]
    after_alone = alone[alone.rindex(probe) + 1 :] if probe in alone else ""
    marker_length, marker_id = _end_of_turn(tokenizer, after[: _common_prefix(after, after_alone)])
    return start, content_end + marker_length, marker_id


def turn_span(tokenizer, messages: list[dict], index: int, text: str) -> tuple[int, int]:
    """[start, end) characters of assistant message `index` in `text` (the rendered chat): what the
    model generates for it, from the end of the prompt through its end-of-turn marker."""
    start, end, _ = _turn(tokenizer, messages, index, text)
    return start, end


def end_of_turn_id(tokenizer) -> int | None:
    """The special token that closes an assistant turn under the tokenizer's chat template
    (`<|eot_id|>` for Llama-3 even where eos is `<|end_of_text|>`), or None when turns end in
    plain text. Generation should stop on it as well as on eos."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    return _turn(tokenizer, messages, 1, _render(tokenizer, messages))[2]


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the [start, end) character span of every trained assistant turn.

    Assistant turns with `weight: 0` (OpenAI's chat format) are context only: they get no span,
    and a template that drops or rewrites them is no problem.
    """
    text = _render(tokenizer, messages)
    spans = [
        turn_span(tokenizer, messages, index, text)
        for index, message in enumerate(messages)
        if message["role"] == "assistant" and message.get("weight", 1) != 0
    ]
    return text, spans


def encode_chat(tokenizer, messages: list[dict]) -> EncodedChat:
    """The whole chat as tokens with offsets and the assistant-only mask, before any truncation."""
    text, spans = assistant_char_spans(tokenizer, messages)
    # The template already wrote any BOS/special tokens into the text: adding them again would
    # double them.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    mask = [
        1 if token_end > token_start and any(token_start < end and token_end > start for start, end in spans) else 0
        for token_start, token_end in offsets
    ]
    return EncodedChat(text=text, input_ids=list(encoding["input_ids"]), offsets=offsets, spans=spans, assistant_masks=mask)


def tokenize_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> TokenizedChat:
    """Token ids of the whole chat and the assistant-only loss mask, optionally truncated."""
    encoded = encode_chat(tokenizer, messages)
    ids, mask = encoded.input_ids, encoded.assistant_masks
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return TokenizedChat(input_ids=ids, assistant_masks=mask, truncated=truncated)
