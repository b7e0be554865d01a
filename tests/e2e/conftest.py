"""Fixtures shared by the end-to-end serve tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The shared tiny model with an untied, random output head.

    The shared model ties its output head to the input embeddings, so with tiny random layers its
    greedy answer repeats the prompt's last token ("\n" forever) whatever the prompt; comparing
    such answers would pass even if the server built the wrong prompt.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.02)
    out = tmp_path_factory.mktemp("models") / "tiny-chat"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
