"""The assistant-only loss mask, compared with tensors built independently from text pieces."""

from __future__ import annotations

import pytest

from tunekit.errors import DataError
from tunekit.train.masking import tokenize_chat


def _expected(tokenizer, pieces: list[tuple[str, int]]):
    ids, mask = [], []
    for text, trained in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [trained] * len(piece_ids)
    return ids, mask


def test_single_turn_mask_covers_reply_and_end_of_turn_only(smol_tokenizer):
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Order 7 is late"},
        {"role": "assistant", "content": '{"category": "shipping"}'},
    ]
    expected_ids, expected_mask = _expected(
        smol_tokenizer,
        [
            ("<|im_start|>system\nAnswer in JSON.<|im_end|>\n<|im_start|>user\nOrder 7 is late<|im_end|>\n", 0),
            ("<|im_start|>assistant\n", 0),
            ('{"category": "shipping"}<|im_end|>', 1),
            ("\n", 0),
        ],
    )
    chat = tokenize_chat(smol_tokenizer, messages)
    assert chat.input_ids == expected_ids
    assert chat.assistant_masks == expected_mask
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
    expected_ids, expected_mask = _expected(
        smol_tokenizer,
        [
            (default_system + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 0),
            ("Hello.<|im_end|>", 1),
            ("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 0),
            ("Goodbye.<|im_end|>", 1),
            ("\n", 0),
        ],
    )
    chat = tokenize_chat(smol_tokenizer, messages)
    assert chat.input_ids == expected_ids
    assert chat.assistant_masks == expected_mask
    assert smol_tokenizer.decode([i for i, m in zip(chat.input_ids, chat.assistant_masks) if m]) == (
        "Hello.<|im_end|>Goodbye.<|im_end|>"
    )


def test_truncation_keeps_ids_and_mask_aligned(smol_tokenizer):
    messages = [{"role": "user", "content": "word " * 20}, {"role": "assistant", "content": "done"}]
    full = tokenize_chat(smol_tokenizer, messages)
    cut = tokenize_chat(smol_tokenizer, messages, max_length=10)
    assert cut.input_ids == full.input_ids[:10]
    assert cut.assistant_masks == full.assistant_masks[:10] == [0] * 10


def test_template_that_rewrites_history_is_refused(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    # A template that prints how many messages follow each one: earlier turns render
    # differently as the chat grows, so prefix spans would be wrong.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }} {{ messages|length }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match="renders earlier turns differently"):
        tokenize_chat(tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
