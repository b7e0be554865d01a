"""The real app under uvicorn on a free loopback port, and LoRA adapters with their plain PEFT answers:
shared by the serve, judge and eval-endpoint tests."""

from __future__ import annotations

import socket
from contextlib import contextmanager

import torch

from tunekit.serve import Engine, create_app
from tunekit.serve.app import serve_in_background

LIMIT = 64  # the server's max_tokens cap in these tests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(engine: Engine, limit: int = LIMIT, app=None):
    """The real app (`app`, or a plain one around `engine`) under uvicorn in a background thread; yields the /v1 base URL."""
    with serve_in_background(app or create_app(engine, max_new_tokens_limit=limit)) as url:
        yield url


def lora_adapter(model_dir, out, seed):
    """A random (non-zero) LoRA on q/v/o of `model_dir`, saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    return out


def peft_reference(model_dir, adapter_dir, prompt, max_new_tokens=8) -> str:
    """Greedy answer of base (+ adapter) through plain transformers/PEFT generate."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.eval().generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
