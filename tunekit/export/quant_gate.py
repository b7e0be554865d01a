"""The quantization gate: perplexity of every GGUF on domain text, relative to the F16 file.

All files are scored by llama.cpp on the same token ids (tokenized once by the F16 file), so the
only difference between two figures is the weights' precision.
"""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import TunekitError
from tunekit.export.llamacpp import perplexity

# Verdict bands for the perplexity increase over F16, in percent (upper bounds, exclusive).
BANDS = ((5.0, "excellent"), (15.0, "acceptable"), (30.0, "concerning"), (float("inf"), "degraded"))


def verdict(increase_pct: float) -> str:
    return next(name for bound, name in BANDS if increase_pct < bound)


def domain_text(run, recipe, tokenizer) -> tuple[str, str]:
    """(text, where it came from): the user's file, else the test (or validation) split rendered
    with the chat template, whole conversations including the answers."""
    from tunekit.data.formats import with_system_prompt
    from tunekit.runs import read_jsonl

    options = recipe.export.gguf
    if options.perplexity_text is not None:
        path = Path(options.perplexity_text)
        if not path.is_file():
            raise TunekitError(
                f"export.gguf.perplexity_text: file not found: {path}", hint="give a plain-text file, or remove the key to use the test split"
            )
        return path.read_text(encoding="utf-8"), str(path)
    for name in ("test", "val"):
        split = run.split(name)
        rows = read_jsonl(split) if split.is_file() else []
        if rows:
            chats = [with_system_prompt(row["messages"], recipe.data.system_prompt) for row in rows]
            return "".join(tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats), f"{split} (chat template)"
    raise TunekitError(
        "no text for the quantization gate: the run has no test or validation split",
        hint="set export.gguf.perplexity_text to a plain-text file of your domain",
    )


def gate_for(type_name: str, options) -> float | None:
    return options.max_ppl_increase.get(type_name, options.default_max_ppl_increase)


def quant_report(reference: Path, quantized: dict[str, Path], text: str, source: str, options) -> dict:
    """Perplexity of the F16 `reference` and of each quantized file; % increase, band, gate verdict.
    A type is `blocked` when its increase exceeds its gate."""
    base = perplexity(reference, text, context=options.perplexity_context, max_tokens=options.perplexity_max_tokens)
    tokens = base.pop("token_ids")
    rows = []
    for type_name, path in quantized.items():
        scored = perplexity(path, text, context=options.perplexity_context, token_ids=tokens)
        increase = 100.0 * (scored["perplexity"] / base["perplexity"] - 1.0)
        gate = gate_for(type_name, options)
        rows.append(
            {
                "type": type_name,
                "file": str(path),
                "bytes": path.stat().st_size,
                "perplexity": scored["perplexity"],
                "increase_pct": increase,
                "verdict": verdict(increase),
                "max_increase_pct": gate,
                "blocked": gate is not None and increase > gate,
            }
        )
    return {
        "text_source": source,
        "tokens_scored": base["tokens_scored"],
        "context": options.perplexity_context,
        "bands_pct": {"excellent": "< 5", "acceptable": "5-15", "concerning": "15-30", "degraded": "> 30"},
        "reference": {"type": "F16", "file": str(reference), "bytes": reference.stat().st_size, "perplexity": base["perplexity"]},
        "quantized": rows,
        "blocked": [row["type"] for row in rows if row["blocked"]],
    }
