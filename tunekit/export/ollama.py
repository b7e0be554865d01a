"""An Ollama Modelfile for an exported GGUF: FROM, the chat template in Ollama's Go-template syntax,
stop parameters, SYSTEM and PARAMETER lines, and the `ollama create` command.

Templates are written per family (ChatML: SmolLM2, Qwen2.5; Llama 3; Phi-3) from the family's message
layout, and checked against the HF template: the layout rendered in Python for a few probe chats,
the way Ollama would render the Go template, must equal `apply_chat_template`. A template whose
family is unknown is not guessed: the Modelfile then has no TEMPLATE and the report says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    marker: str  # text that identifies the family in a HF chat template
    header: str  # opens a message; {role} is replaced
    end: str  # closes a message
    bos: str = ""  # written by the HF template, added by llama.cpp at run time in Ollama
    stops: tuple[str, ...] = ()

    def go_template(self) -> str:
        header = self.header.replace("{role}", "{{ .Role }}")
        generation = self.header.replace("{role}", "assistant")
        return f"{{{{- range .Messages }}}}{header}{{{{ .Content }}}}{self.end}{{{{ end }}}}{generation}"

    def render(self, messages: list[dict]) -> str:
        """What Ollama makes of `go_template()` for `messages` (plus llama.cpp's BOS)."""
        body = "".join(self.header.replace("{role}", m["role"]) + m["content"] + self.end for m in messages)
        return self.bos + body + self.header.replace("{role}", "assistant")


FAMILIES = (
    Family("chatml", "<|im_start|>", "<|im_start|>{role}\n", "<|im_end|>\n", stops=("<|im_start|>", "<|im_end|>")),
    Family(
        "llama3",
        "<|start_header_id|>",
        "<|start_header_id|>{role}<|end_header_id|>\n\n",
        "<|eot_id|>",
        bos="<|begin_of_text|>",
        stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Phi-3 (and tunekit's shipped `phi-3` chat template): `<|role|>` headers, turns closed by `<|end|>`.
    Family("phi3", "<|assistant|>", "<|{role}|>\n", "<|end|>\n", stops=("<|end|>", "<|user|>", "<|assistant|>")),
)
PROBE = [
    [{"role": "user", "content": "Ticket: my parcel is late."}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Ticket: refund please."}],
    [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": '{"ok": true}'},
        {"role": "user", "content": "second question"},
    ],
]


def detect_family(chat_template: str | None) -> Family | None:
    return next((f for f in FAMILIES if chat_template and f.marker in chat_template), None)


def template_default_system(tokenizer, family: Family) -> str | None:
    """The system prompt a HF template inserts by itself when a chat has none (SmolLM2 does)."""
    rendered = tokenizer.apply_chat_template(PROBE[0], tokenize=False, add_generation_prompt=True)
    opening = family.bos + family.header.replace("{role}", "system")
    if not rendered.startswith(opening):
        return None
    return rendered[len(opening) :].split(family.end, 1)[0]


def verify_family(tokenizer, family: Family, system: str | None, recipe_system: str | None) -> list[str]:
    """Probe chats whose Ollama rendering differs from the HF template's (empty: the translation holds).
    Ollama puts the Modelfile's SYSTEM first when a chat has no system message; tunekit's data and eval
    add the recipe's system prompt the same way."""
    from tunekit.data.formats import with_system_prompt

    mismatches = []
    for chat in PROBE:
        expected = tokenizer.apply_chat_template(with_system_prompt(chat, recipe_system), tokenize=False, add_generation_prompt=True)
        if family.render(with_system_prompt(chat, system)) != expected:
            mismatches.append(chat[-1]["content"])
    return mismatches


def ollama_model_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "tunekit-model"


def _quoted(value: str) -> str:
    if '"""' in value:
        raise ValueError('a Modelfile value cannot contain """')
    return f'"""{value}"""'


def _parameter_value(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def stop_strings(family: Family | None, tokenizer, end_ids: list[int]) -> list[str]:
    stops = list(family.stops if family else ())
    stops += [tokenizer.convert_ids_to_tokens(i) for i in end_ids]
    return list(dict.fromkeys(s for s in stops if s))


def write_modelfile(path: Path, gguf_file: Path, tokenizer, end_ids: list[int], recipe) -> dict:
    """Write the Modelfile at `path` (a run's RunPaths.modelfile) for `gguf_file`; return what was
    written and the create command."""
    options = recipe.export.ollama
    family = detect_family(tokenizer.chat_template)
    system = options.system or recipe.data.system_prompt or (template_default_system(tokenizer, family) if family else None)
    mismatches = verify_family(tokenizer, family, system, recipe.data.system_prompt) if family else []
    lines = [f"# Ollama Modelfile written by tunekit for run {recipe.run_name} (base {recipe.base_model})", f"FROM ./{gguf_file.name}"]
    if family:
        lines.append(f"TEMPLATE {_quoted(family.go_template())}")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    stops = stop_strings(family, tokenizer, end_ids)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    for key, value in options.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_parameter_value(item)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    name = ollama_model_name(options.model_name or recipe.run_name)
    return {
        "path": str(path),
        "gguf": str(gguf_file),
        "family": family.name if family else None,
        "template_verified": bool(family) and not mismatches,
        "template_mismatches": mismatches,
        "system": system,
        "stop": stops,
        "command": f"ollama create {name} -f {path.resolve()}",
    }
