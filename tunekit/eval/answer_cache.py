"""The base model's answers, kept between runs: the base does not change when the tuned side does.

Every `tunekit eval` answers the test prompts and the forgetting suite with the base as well as
with the tuned model, and on the example the base's half is ~45 % of the stage. A user who
retrains and re-evaluates gets the same base answers each time, so they are stored under
`$TUNEKIT_HOME/answers/` (default `~/.cache/tunekit`) and reused when everything that decides
them is the same. The key covers:

- the model files: name, size and modification time of every file of the base model's folder
  (a changed or re-converted model is a different key);
- the exact prompts as rendered by the tokenizer in use (its chat template and vocabulary size);
- the decoding: token budget, batch size (batches pad differently), temperature and seed;
- what computes them: torch and transformers versions, the device, the CPU model and torch's
  thread count (float results may differ between CPUs or builds).

A hit returns the stored `Generations` (texts, token counts, finish reasons and the timings
measured when they were generated) marked `cached`, which the report and the terminal say.
`eval.cache_base_answers: false` turns it off. A cache file that cannot be read is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path

from tunekit.eval.generation import Decoding, Generations

VERSION = 1  # bump when the stored layout or the meaning of a key changes


def model_fingerprint(path: str | Path) -> str | None:
    """Name, size and mtime of every file of a local model folder (None when it is not a folder)."""
    root = Path(path)
    if not root.is_dir():
        return None
    entries = sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    )
    return hashlib.sha256(json.dumps([str(root.resolve()), entries]).encode()).hexdigest()


def _machine() -> dict:
    import torch
    import transformers

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        cpu = platform.processor()
    return {"torch": torch.__version__, "transformers": transformers.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def key(fingerprint: str, tokenizer, prompts: list[list[dict]], decoding: Decoding) -> str:
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    material = {
        "version": VERSION, "model": fingerprint, "vocab": len(tokenizer), "prompts": texts,
        "decoding": asdict(decoding), "machine": _machine(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _path(cache_key: str) -> Path:
    from tunekit.models.loading import tunekit_home

    return tunekit_home() / "answers" / cache_key[:2] / f"{cache_key}.json"


def load(cache_key: str) -> Generations | None:
    try:
        stored = json.loads(_path(cache_key).read_text(encoding="utf-8"))
        return Generations(**stored["generations"], cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_key: str, generations: Generations) -> None:
    path = _path(cache_key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in asdict(generations).items() if k != "cached"}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": VERSION, "generations": fields}), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written costs the next run time, nothing else
