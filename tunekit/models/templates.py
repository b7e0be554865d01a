"""The chat template a recipe names (`chat_template:`), put on the tokenizer every stage loads.

A base (pretrained) model usually has no chat template, and an instruct model's own template is
the one it was tuned with; a recipe may name one of the shipped templates (the `.jinja` files in
`chat_templates/`, one per format) or give the path of its own Jinja file. Whatever is chosen is
set on the tokenizer when it is loaded, so data lengths, the loss mask, eval, export and serving
all render chats alike, and training saves it with the adapter, so every later stage and every
export (merged model, GGUF metadata, Modelfile) carries it from there.

A template writes its own markers (`<|im_start|>`, `<start_of_turn>`...). Where the vocabulary
has no such token, it is added as a special token: the text of a marker must never be split
into ordinary sub-words, or "where a turn ends" would be a sequence the model can also write
inside an answer. The model then gets a row for each (`resize_for_tokenizer`), and training
trains the embeddings with the adapter (tunekit.train.modeling says how and why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunekit.config.recipe import CHAT_TEMPLATES_DIR, shipped_chat_templates
from tunekit.errors import ModelError


@dataclass(frozen=True)
class TemplateTokens:
    """What a shipped template needs from the vocabulary.

    `end_of_turn` is the token that closes an assistant reply, so generation stops on it and it
    becomes the tokenizer's eos; None: the template closes replies with the tokenizer's own eos
    (Mistral, the plain-text Alpaca format), which then stays as it is."""

    special: tuple[str, ...]
    end_of_turn: str | None


# One entry per file in chat_templates/ (a test checks that they match).
SHIPPED_TOKENS = {
    "chatml": TemplateTokens(("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama-3": TemplateTokens(("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "gemma": TemplateTokens(("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "mistral": TemplateTokens((), None),
    "phi-3": TemplateTokens(("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
    "alpaca": TemplateTokens((), None),
}

# Markers a template of the user's own is taken to need as single tokens: the `<|name|>` form that
# chat formats use. Anything else in the file is treated as text.
_MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass(frozen=True)
class ChosenTemplate:
    name: str  # the shipped name, or the file's path
    jinja: str
    tokens: TemplateTokens


def names_hint() -> str:
    return f"shipped templates: {', '.join(shipped_chat_templates())}; or the path of a Jinja file"


def choose_template(reference: str) -> ChosenTemplate:
    """The shipped template called `reference`, or the Jinja file at that path (already anchored at the recipe's folder)."""
    if reference in SHIPPED_TOKENS:
        jinja = (CHAT_TEMPLATES_DIR / f"{reference}.jinja").read_text(encoding="utf-8")
        return ChosenTemplate(reference, jinja, SHIPPED_TOKENS[reference])
    path = Path(reference).expanduser()
    if not path.is_file():
        raise ModelError(f"chat_template: file not found: {path}", hint=names_hint())
    try:
        jinja = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"chat_template: cannot read {path}: {exc}") from None
    if "messages" not in jinja:
        raise ModelError(
            f"chat_template: {path} does not look like a chat template (it never reads `messages`)", hint=names_hint()
        )
    markers = tuple(dict.fromkeys(_MARKER.findall(jinja)))
    return ChosenTemplate(str(path), jinja, TemplateTokens(markers, None))


def _missing_tokens(tokenizer, tokens: tuple[str, ...]) -> list[str]:
    """The template's markers the tokenizer would not encode as one token of their own."""
    missing = []
    for token in tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != token:
            missing.append(token)
    return missing


def apply_template(tokenizer, chosen: ChosenTemplate) -> list[int]:
    """Put `chosen` on the tokenizer, adding the special tokens it needs; returns the added tokens' ids."""
    from tokenizers import AddedToken

    missing = _missing_tokens(tokenizer, chosen.tokens.special)
    if missing:
        # normalized=False: the marker is matched as written, never lower-cased or split.
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    tokenizer.chat_template = chosen.jinja
    end_of_turn = chosen.tokens.end_of_turn or _closing_marker(tokenizer, chosen.tokens.special)
    if end_of_turn is not None:
        # The turn's closing token is what generation must stop on, here and in every export:
        # the GGUF's eos and the merged model's generation config are read from it.
        tokenizer.eos_token = end_of_turn
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


def _closing_marker(tokenizer, markers: tuple[str, ...]) -> str | None:
    """The marker a template of the user's own writes right after an assistant reply, if any."""
    probe = "tunekit-end-of-turn-probe"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this tiny chat keeps the tokenizer's eos
        return None
    tail = text.split(probe, 1)[1] if probe in text else ""
    return next((marker for marker in markers if tail.startswith(marker)), None)


def resize_for_tokenizer(model, tokenizer) -> bool:
    """Give `model` an embedding (and output) row for every token of `tokenizer`; True when it grew.

    New rows start at the mean of the existing ones, deterministically: transformers' default
    samples them at random, which would make the base differ from one load to the next; the
    mean keeps a new token's logit ordinary until training moves its row."""
    import torch

    inputs = model.get_input_embeddings()
    old_rows = inputs.weight.shape[0]
    if len(tokenizer) <= old_rows:
        return False
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            weight = layer.weight
            weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True).to(weight.dtype)
    return True
