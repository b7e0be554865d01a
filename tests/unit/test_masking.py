"""The assistant-only loss mask, compared with tensors built independently from text pieces.

Every template family gets a tokenizer built here without downloading: the real SmolLM2
tokenizer with the family's special tokens added and a chat template written to render the
family's format. The expected tensors come from a small per-family "oracle" that writes the
format as (text, trained) pieces by hand; the pieces are tokenized one by one, so the expected
mask never goes through the code under test.
"""

from __future__ import annotations

import copy
import re

import pytest
from tokenizers import AddedToken

from tunekit.errors import DataError
from tunekit.train.masking import end_of_turn_id, tokenize_chat


def _expected(tokenizer, pieces: list[tuple[str, int]]):
    ids, mask = [], []
    for text, trained in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [trained] * len(piece_ids)
    return ids, mask


def _assert_mask(tokenizer, messages, pieces):
    """The rendered chat is the pieces joined, and ids and mask equal the pieces' tokens."""
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "".join(text for text, _ in pieces)
    expected_ids, expected_mask = _expected(tokenizer, pieces)
    chat = tokenize_chat(tokenizer, messages)
    assert chat.input_ids == expected_ids
    assert chat.assistant_masks == expected_mask
    return chat


def test_single_turn_mask_covers_reply_and_end_of_turn_only(smol_tokenizer):
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Order 7 is late"},
        {"role": "assistant", "content": '{"category": "shipping"}'},
    ]
    chat = _assert_mask(
        smol_tokenizer,
        messages,
        [
            ("<|im_start|>system\nAnswer in JSON.<|im_end|>\n<|im_start|>user\nOrder 7 is late<|im_end|>\n", 0),
            ("<|im_start|>assistant\n", 0),
            ('{"category": "shipping"}<|im_end|>', 1),
            ("\n", 0),
        ],
    )
    trained = [i for i, m in zip(chat.input_ids, chat.assistant_masks) if m]
    assert trained[-1] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_multi_turn_trains_every_assistant_turn_and_default_system_prompt_is_masked(smol_tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    chat = _assert_mask(
        smol_tokenizer,
        messages,
        [
            (default_system + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 0),
            ("Hello.<|im_end|>", 1),
            ("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 0),
            ("Goodbye.<|im_end|>", 1),
            ("\n", 0),
        ],
    )
    assert smol_tokenizer.decode([i for i, m in zip(chat.input_ids, chat.assistant_masks) if m]) == (
        "Hello.<|im_end|>Goodbye.<|im_end|>"
    )


def test_truncation_keeps_ids_and_mask_aligned(smol_tokenizer):
    messages = [{"role": "user", "content": "word " * 20}, {"role": "assistant", "content": "done"}]
    full = tokenize_chat(smol_tokenizer, messages)
    cut = tokenize_chat(smol_tokenizer, messages, max_length=10)
    assert cut.input_ids == full.input_ids[:10]
    assert cut.assistant_masks == full.assistant_masks[:10] == [0] * 10
    assert cut.truncated and not full.truncated
    assert not tokenize_chat(smol_tokenizer, messages, max_length=len(full.input_ids)).truncated


# --- one tokenizer per template family ------------------------------------------------------

CHATML = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Mistral v3: no system turn of its own; the system prompt goes into the *last* user message,
# replies follow `[/INST]` after a space, trimmed, closed by `</s>`. No generation prompt text.
MISTRAL_V3 = (
    "{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}{%- set chat = messages[1:] %}"
    "{%- else %}{%- set chat = messages %}{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in chat %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{{- bos_token }}{%- for m in chat %}"
    "{%- if m.role == 'user' %}"
    "{%- if system is defined and loop.index0 == ns.last_user %}{{ '[INST] ' + system + '\\n\\n' + m.content + '[/INST]' }}"
    "{%- else %}{{ '[INST] ' + m.content + '[/INST]' }}{%- endif %}"
    "{%- else %}{{ ' ' + (m.content | trim) + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
# Mistral v7 (Tekken): a system prompt block, replies glued to `[/INST]`.
MISTRAL_V7 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m.role == 'system' %}{{ '[SYSTEM_PROMPT]' + m.content + '[/SYSTEM_PROMPT]' }}"
    "{%- elif m.role == 'user' %}{{ '[INST]' + m.content + '[/INST]' }}"
    "{%- else %}{{ m.content + eos_token }}{%- endif %}{%- endfor %}"
)
# Gemma: role `model`, the system prompt folded into the first user turn, trimmed content.
GEMMA = (
    "{{- bos_token }}{%- if messages[0].role == 'system' %}{%- set prefix = messages[0].content + '\\n\\n' %}"
    "{%- set chat = messages[1:] %}{%- else %}{%- set prefix = '' %}{%- set chat = messages %}{%- endif %}"
    "{%- for m in chat %}{%- set role = 'model' if m.role == 'assistant' else m.role %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + (m.content | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)
# Phi-3: `<|end|>` closes each turn (and swallows the newline after it: rstrip), eos after the whole chat.
PHI3 = (
    "{%- for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- else %}{{ eos_token }}{%- endif %}"
)


def _split_system(messages):
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _trained(message) -> int:
    return 0 if message.get("weight", 1) == 0 else 1


def oracle_chatml(messages):
    pieces = []
    for m in messages:
        if m["role"] == "assistant":
            pieces += [("<|im_start|>assistant\n", 0), (m["content"] + "<|im_end|>", _trained(m)), ("\n", 0)]
        else:
            pieces.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", 0))
    return pieces


def oracle_llama3(messages):
    pieces = [("<|begin_of_text|>", 0)]
    for m in messages:
        # Two newline tokens, as this tokenizer splits "\n\n" before a word.
        pieces += [(f"<|start_header_id|>{m['role']}<|end_header_id|>", 0), ("\n", 0), ("\n", 0)]
        trained = _trained(m) if m["role"] == "assistant" else 0
        pieces.append((m["content"].strip() + "<|eot_id|>", trained))
    return pieces


def oracle_mistral_v3(messages):
    system, chat = _split_system(messages)
    last_user = max(i for i, m in enumerate(chat) if m["role"] == "user")
    pieces = [("<s>", 0)]
    for i, m in enumerate(chat):
        if m["role"] == "user":
            text = f"{system}\n\n{m['content']}" if system is not None and i == last_user else m["content"]
            pieces.append((f"[INST] {text}[/INST]", 0))
        else:
            # BPE glues the space to the first word, so the model has to generate it: trained.
            pieces.append((" " + m["content"].strip() + "</s>", _trained(m)))
    return pieces


def oracle_mistral_v7(messages):
    pieces = [("<s>", 0)]
    for m in messages:
        if m["role"] == "system":
            pieces.append((f"[SYSTEM_PROMPT]{m['content']}[/SYSTEM_PROMPT]", 0))
        elif m["role"] == "user":
            pieces.append((f"[INST]{m['content']}[/INST]", 0))
        else:
            pieces.append((m["content"] + "</s>", _trained(m)))
    return pieces


def oracle_gemma(messages):
    system, chat = _split_system(messages)
    pieces = [("<bos>", 0)]
    for i, m in enumerate(chat):
        prefix = f"{system}\n\n" if system is not None and i == 0 else ""
        if m["role"] == "assistant":
            pieces += [("<start_of_turn>model\n", 0), (m["content"].strip() + "<end_of_turn>", _trained(m)), ("\n", 0)]
        else:
            pieces.append((f"<start_of_turn>{m['role']}\n{prefix}{m['content'].strip()}<end_of_turn>\n", 0))
    return pieces


def oracle_phi3(messages):
    pieces = []
    for m in messages:
        trained = _trained(m) if m["role"] == "assistant" else 0
        # `<|end|>` has rstrip: the newline after it is part of that one token.
        pieces += [(f"<|{m['role']}|>\n", 0), (m["content"] + "<|end|>\n", trained)]
    return [*pieces, ("<|endoftext|>", 0)]


def _special(*tokens, rstrip=False):
    return [AddedToken(t, special=True, normalized=False, rstrip=rstrip) for t in tokens]


FAMILIES = {
    # Qwen2.5-style ChatML without a default system prompt (SmolLM2's own template is tested above).
    "chatml": dict(template=CHATML, eos="<|im_end|>", extra=[], oracle=oracle_chatml, end="<|im_end|>"),
    # A Llama-3 *base* tokenizer: eos is <|end_of_text|>, but turns end with <|eot_id|>.
    "llama3": dict(
        template=LLAMA3,
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        extra=_special("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        oracle=oracle_llama3,
        end="<|eot_id|>",
    ),
    "mistral_v3": dict(
        template=MISTRAL_V3, bos="<s>", eos="</s>", extra=_special("[INST]", "[/INST]"), oracle=oracle_mistral_v3, end="</s>"
    ),
    "mistral_v7": dict(
        template=MISTRAL_V7,
        bos="<s>",
        eos="</s>",
        extra=_special("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
        oracle=oracle_mistral_v7,
        end="</s>",
    ),
    "gemma": dict(
        template=GEMMA,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        extra=_special("<start_of_turn>", "<end_of_turn>"),
        oracle=oracle_gemma,
        end="<end_of_turn>",
    ),
    "phi3": dict(
        template=PHI3,
        eos="<|endoftext|>",
        extra=[*_special("<|system|>", "<|user|>", "<|assistant|>"), *_special("<|end|>", rstrip=True)],
        oracle=oracle_phi3,
        end="<|end|>",
    ),
}


def family_tokenizer(smol_tokenizer, family: str):
    spec = FAMILIES[family]
    tokenizer = copy.deepcopy(smol_tokenizer)
    special = {"eos_token": spec["eos"], "additional_special_tokens": spec["extra"]}
    special |= {key: spec[name] for key, name in (("bos_token", "bos"), ("pad_token", "pad")) if name in spec}
    tokenizer.add_special_tokens(special)
    if "pad" not in spec:
        tokenizer.pad_token = spec["eos"]
    tokenizer.chat_template = spec["template"]
    return tokenizer


@pytest.fixture(scope="module")
def family_tokenizers(smol_tokenizer):
    return {family: family_tokenizer(smol_tokenizer, family) for family in FAMILIES}


def user(text):
    return {"role": "user", "content": text}


def assistant(text, weight=None):
    return {"role": "assistant", "content": text, **({} if weight is None else {"weight": weight})}


SYSTEM = {"role": "system", "content": "Be brief."}
CASES = {
    "single": [user("Order 7 is late"), assistant('{"category": "shipping"}')],
    "single+system": [SYSTEM, user("Order 7 is late"), assistant('{"category": "shipping"}')],
    # The reply repeats the user's words: the mask must land on the reply, not the first match.
    "multi": [user("Hello."), assistant("Hello."), user("What is 6 x 7?"), assistant("42."), user("Thanks"), assistant("You are welcome.")],
    "multi+system+weight0": [SYSTEM, user("Hi"), assistant("Hello.", weight=0), user("Bye"), assistant("Goodbye.", weight=1)],
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_mask_equals_expected_tensor_for_every_family(family_tokenizers, family, case):
    tokenizer, messages = family_tokenizers[family], CASES[case]
    chat = _assert_mask(tokenizer, messages, FAMILIES[family]["oracle"](messages))
    trained_turns = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0]
    end_id = tokenizer.convert_tokens_to_ids(FAMILIES[family]["end"])
    # Each trained turn ends with the family's end-of-turn token, which is trained; nothing else of it is.
    assert sum(1 for i, m in zip(chat.input_ids, chat.assistant_masks) if m and i == end_id) == len(trained_turns)
    assert chat.assistant_masks[-1] == 0 or chat.input_ids[-1] == end_id


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_token_is_read_off_the_template(family_tokenizers, family):
    tokenizer = family_tokenizers[family]
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == FAMILIES[family]["end"]


@pytest.mark.parametrize("family", ["llama3", "gemma", "mistral_v3"])
def test_padding_around_replies_is_trimmed_by_the_template_and_mask_follows(family_tokenizers, family):
    tokenizer = family_tokenizers[family]
    messages = [SYSTEM, user("  What is 6 x 7?  "), assistant("\n  42.  \n")]
    chat = _assert_mask(tokenizer, messages, FAMILIES[family]["oracle"](messages))
    assert tokenizer.decode([i for i, m in zip(chat.input_ids, chat.assistant_masks) if m]).strip().startswith("42.")


def test_phi3_trailing_eos_after_the_whole_chat_is_not_trained(family_tokenizers):
    tokenizer = family_tokenizers["phi3"]
    chat = tokenize_chat(tokenizer, CASES["single"])
    assert chat.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert chat.assistant_masks[-2:] == [1, 0]


def test_template_with_plain_text_turn_end_trains_the_marker_not_the_newline(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{%- for m in messages %}{{ '### ' + m.role + ':\\n' + m.content + '\\n### end\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '### assistant:\\n' }}{%- endif %}"
    )
    messages = [user("Hi"), assistant("Hello."), user("Bye"), assistant("Goodbye.")]
    _assert_mask(
        tokenizer,
        messages,
        [
            ("### user:\nHi\n### end\n### assistant:\n", 0),
            ("Hello.\n### end", 1),
            ("\n### user:\nBye\n### end\n### assistant:\n", 0),
            ("Goodbye.\n### end", 1),
            ("\n", 0),
        ],
    )


def test_template_without_turn_end_trains_eos_only_where_it_closes_the_chat(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    # The eos closes the whole chat, not each turn: a middle reply has no end marker to learn; the
    # last one is followed by the eos, which teaches the model to stop.
    tokenizer.chat_template = (
        "{%- for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ 'assistant:' }}{%- else %}{{ eos_token }}{%- endif %}"
    )
    messages = [user("Hi"), assistant("Hello."), user("Bye"), assistant("Goodbye.")]
    _assert_mask(
        tokenizer,
        messages,
        [("user: Hi\nassistant:", 0), (" Hello.", 1), ("\nuser: Bye\nassistant:", 0), (" Goodbye.\n<|im_end|>", 1)],
    )


def test_template_without_generation_prompt_trains_the_header_the_model_must_write(smol_tokenizer):
    """The mask is what the model generates after the template's own prompt: with no generation
    prompt to end the prompt on, the reply's header is the model's to write."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{%- for m in messages %}{{ '### ' + m.role + ':\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    _assert_mask(
        tokenizer,
        [user("Hi"), assistant("Hello.")],
        [("### user:\nHi<|im_end|>\n", 0), ("### assistant:\nHello.<|im_end|>", 1), ("\n", 0)],
    )


# --- templates that render history differently ----------------------------------------------

# Like reasoning models' templates: only the last reply is shown in full; earlier ones are elided.
ELIDING = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
    "{%- if m.role == 'assistant' and not loop.last %}{{ '(earlier reply)' }}{%- else %}{{ m.content }}{%- endif %}"
    "{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Like Qwen3's: `<think>` reasoning is cut from replies that are not the last one.
CUTTING = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
    "{%- if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{%- else %}{{ m.content }}{%- endif %}"
    "{{ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize(
    "template, reply, message",
    [
        (ELIDING, "Hello.", "leaves out message 2 (an assistant reply)"),
        (CUTTING, "<think>greet back</think>Hello.", "rewrites the text of message 2 (an assistant reply)"),
    ],
)
def test_template_that_rewrites_a_trained_reply_is_refused(smol_tokenizer, template, reply, message):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = template
    messages = [user("Hi"), assistant(reply), user("Bye"), assistant("Goodbye.")]
    with pytest.raises(DataError, match=re.escape(message)) as err:
        tokenize_chat(tokenizer, messages)
    assert "weight: 0" in err.value.hint
    # As context only (weight 0) the rewritten reply is fine: the last reply is trained.
    messages[1] = assistant(reply, weight=0)
    chat = tokenize_chat(tokenizer, messages)
    assert tokenizer.decode([i for i, m in zip(chat.input_ids, chat.assistant_masks) if m]) == "Goodbye.<|im_end|>"


def test_template_depending_on_later_turns_is_masked_on_the_full_render(smol_tokenizer):
    """A template may render earlier turns differently as the chat grows (here: a message count in
    each header); the loss is taken on the full render, so the mask must match that render."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }} {{ messages|length }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    _assert_mask(
        tokenizer,
        [user("a"), assistant("b"), user("c"), assistant("d")],
        [
            ("<|im_start|>user 4\na<|im_end|>\n<|im_start|>assistant 4\n", 0),
            ("b<|im_end|>", 1),
            ("\n<|im_start|>user 4\nc<|im_end|>\n<|im_start|>assistant 4\n", 0),
            ("d<|im_end|>", 1),
            ("\n", 0),
        ],
    )


def test_a_template_error_is_a_data_error(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match="roles must alternate"):
        tokenize_chat(tokenizer, [user("a"), assistant("b")])


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_stops_on_the_end_of_turn_token_as_well_as_eos(family_tokenizers, family):
    from types import SimpleNamespace

    from tunekit.eval.generation import _until_stop
    from tunekit.models import end_of_turn_ids

    tokenizer = family_tokenizers[family]
    end_id = tokenizer.convert_tokens_to_ids(FAMILIES[family]["end"])
    stops = end_of_turn_ids(tokenizer, SimpleNamespace(eos_token_id=[7]))  # only the config's eos ids are read
    assert stops[0] == tokenizer.eos_token_id and end_id in stops and 7 in stops
    assert len(stops) == len(set(stops))
    assert end_id == end_of_turn_id(tokenizer)  # the stop and the trained end-of-turn token agree
    assert _until_stop([5, 9, end_id, 11, tokenizer.eos_token_id], stops) == [5, 9]
    assert _until_stop([5, 9], stops) == [5, 9]
