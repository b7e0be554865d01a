"""An Ollama Modelfile for an exported GGUF: FROM, the chat template in Ollama's Go-template syntax,
stop parameters, SYSTEM and PARAMETER lines, and the `ollama create` command.

Templates are written per family (ChatML: SmolLM2, Qwen2.5; Llama 3; Phi-3; Gemma; Mistral's
`[INST]`; the plain-text Alpaca format) from the family's message layout, and checked against the
HF template: the layout rendered in Python for a few probe chats, the way Ollama would render the
Go template, must equal `apply_chat_template`. A template whose family is unknown is not guessed:
the Modelfile then has no TEMPLATE and the report says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The role of a turn that lays out every role alike, with the role's own name where "{role}" is.
ANY_ROLE = "{role}"


@dataclass(frozen=True)
class Family:
    """A family's layout of a chat, from which both the Go template and its Python rendering are made.

    Each message is written as opening + content + closing, by the turn of its role; in the openings
    and closings "{role}" is the message's role and "{eos}" the tokenizer's eos text. A role with no
    turn is not written (a family without a system role folds the system prompt into the first user
    message instead)."""

    name: str
    marker: str  # text that identifies the family in a HF chat template
    turns: tuple[tuple[str, str, str], ...]  # (role, opening, closing); ANY_ROLE alone: one layout for every role
    generation: str  # what opens the answer ("": the answer follows the last user turn directly)
    stops: tuple[str, ...] = ()
    bos: bool = False  # the HF template opens with the tokenizer's bos token (llama.cpp's to add, or the TEMPLATE's)
    system_joiner: str | None = None  # no system role: the system prompt, then this, opens the first user message

    def _turn(self, role: str) -> tuple[str, str] | None:
        for turn_role, opening, closing in self.turns:
            if turn_role in (role, ANY_ROLE):
                return opening.replace("{role}", role), closing
        return None

    def _go_turn(self, role: str, opening: str, closing: str) -> str:
        content = "{{ .Content }}"
        if role == "user" and self.system_joiner is not None:
            # $system is emptied once written, so only the first user message carries it.
            content = f'{{{{ if $system }}}}{{{{ $system }}}}{self.system_joiner}{{{{ $system = "" }}}}{{{{ end }}}}{content}'
        return opening.replace("{role}", "{{ .Role }}") + content + closing

    def go_template(self, eos_token: str = "", bos_token: str = "") -> str:
        """The TEMPLATE: Ollama passes the chat as .Messages (a Modelfile SYSTEM is the first message when
        the chat has none) and every system message's content as $.System. `bos_token` opens it where
        llama.cpp does not add the bos token by itself (Ollama reads special tokens in the prompt)."""
        if self.turns[0][0] == ANY_ROLE:
            body = self._go_turn(*self.turns[0])
        else:
            branches = [
                f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{turn[0]}" }}}}{self._go_turn(*turn)}'
                for i, turn in enumerate(self.turns)
            ]
            body = "".join(branches) + "{{ end }}"
        # No `{{-` after the first action: it would eat the newlines that close a turn.
        head = bos_token + ("{{- $system := $.System }}" if self.system_joiner is not None else "")
        return (head + "{{- range .Messages }}" + body + "{{ end }}" + self.generation).replace("{eos}", eos_token)

    def render(self, messages: list[dict], bos_token: str = "", eos_token: str = "") -> str:
        """What Ollama makes of `go_template()` for `messages`, step for step, with the bos token first
        where the family writes one (llama.cpp adds it, or the TEMPLATE writes it: the same token)."""
        system, collated = ollama_collate(messages)
        pending = system if self.system_joiner is not None else ""
        parts = [(bos_token or "") if self.bos else ""]
        for message in collated:
            turn = self._turn(message["role"])
            if turn is None:
                continue
            opening, closing = (piece.replace("{eos}", eos_token or "") for piece in turn)
            content = message["content"]
            if message["role"] == "user" and pending:
                content, pending = pending + self.system_joiner + content, ""
            parts.append(opening + content + closing)
        return "".join(parts) + self.generation.replace("{eos}", eos_token or "")


def ollama_collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's template values for a chat: every system message's content joined by blank lines (its
    $.System), and the messages with consecutive ones of the same role merged the same way."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict] = []
    for message in messages:
        if collated and collated[-1]["role"] == message["role"]:
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + message["content"]}
        else:
            collated.append(dict(message))
    return "\n\n".join(system), collated


def _uniform(name: str, marker: str, header: str, end: str, **kwargs) -> Family:
    """A family whose every role opens with `header` (its name where "{role}" is) and closes with `end`."""
    return Family(name, marker, ((ANY_ROLE, header, end),), header.replace("{role}", "assistant"), **kwargs)


FAMILIES = (
    _uniform("chatml", "<|im_start|>", "<|im_start|>{role}\n", "<|im_end|>\n", stops=("<|im_start|>", "<|im_end|>")),
    _uniform(
        "llama3",
        "<|start_header_id|>",
        "<|start_header_id|>{role}<|end_header_id|>\n\n",
        "<|eot_id|>",
        bos=True,
        stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Phi-3 (and tunekit's shipped `phi-3` chat template): `<|role|>` headers, turns closed by `<|end|>`.
    _uniform("phi3", "<|assistant|>", "<|{role}|>\n", "<|end|>\n", stops=("<|end|>", "<|user|>", "<|assistant|>")),
    # Gemma: no system role (the system prompt opens the first user turn), the assistant is "model".
    Family(
        "gemma",
        "<start_of_turn>",
        (("user", "<start_of_turn>user\n", "<end_of_turn>\n"), ("assistant", "<start_of_turn>model\n", "<end_of_turn>\n")),
        "<start_of_turn>model\n",
        stops=("<start_of_turn>", "<end_of_turn>"),
        bos=True,
        system_joiner="\n\n",
    ),
    # Mistral's [INST]: no system role either, no generation prompt, each answer closed by the eos token.
    Family(
        "mistral",
        "[INST]",
        (("user", "[INST] ", " [/INST]"), ("assistant", " ", "{eos}")),
        "",
        stops=("[INST]", "[/INST]"),
        bos=True,
        system_joiner="\n\n",
    ),
    # Plain text for base models (tunekit's shipped `alpaca`): answers closed by the eos token.
    Family(
        "alpaca",
        "### Instruction:",
        (("system", "", "\n\n"), ("user", "### Instruction:\n", "\n\n"), ("assistant", "### Response:\n", "{eos}\n\n")),
        "### Response:\n",
        stops=("### Instruction:", "### Response:"),
    ),
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


def _render(family: Family, tokenizer, messages: list[dict]) -> str:
    return family.render(messages, tokenizer.bos_token, tokenizer.eos_token)


def template_default_system(tokenizer, family: Family) -> str | None:
    """The system prompt a HF template inserts by itself when a chat has none (SmolLM2 does): the text
    that, given as the system message, makes the family's rendering equal the HF one."""
    rendered = tokenizer.apply_chat_template(PROBE[0], tokenize=False, add_generation_prompt=True)
    if _render(family, tokenizer, PROBE[0]) == rendered:
        return None
    placeholder = "\x00tunekit-system\x00"
    before, after = _render(family, tokenizer, [{"role": "system", "content": placeholder}, *PROBE[0]]).split(placeholder)
    if len(rendered) <= len(before) + len(after) or not (rendered.startswith(before) and rendered.endswith(after)):
        return None
    return rendered[len(before) : len(rendered) - len(after)]


def verify_family(tokenizer, family: Family, system: str | None, recipe_system: str | None) -> list[str]:
    """Probe chats whose Ollama rendering differs from the HF template's (empty: the translation holds).
    Ollama puts the Modelfile's SYSTEM first when a chat has no system message; tunekit's data and eval
    add the recipe's system prompt the same way."""
    from tunekit.data.formats import with_system_prompt

    mismatches = []
    for chat in PROBE:
        expected = tokenizer.apply_chat_template(with_system_prompt(chat, recipe_system), tokenize=False, add_generation_prompt=True)
        if _render(family, tokenizer, with_system_prompt(chat, system)) != expected:
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


def llama_cpp_adds_bos(tokenizer, add_bos_token: bool | None) -> bool:
    """Whether llama.cpp puts the bos token before a prompt by itself: the GGUF's add_bos_token, else
    what the HF tokenizer does (the GGUF converter writes the flag from it)."""
    if add_bos_token is not None:
        return bool(add_bos_token)
    return tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]


def stop_strings(family: Family | None, tokenizer, end_ids: list[int]) -> list[str]:
    stops = list(family.stops if family else ())
    stops += [tokenizer.convert_ids_to_tokens(i) for i in end_ids]
    return list(dict.fromkeys(s for s in stops if s))


def write_modelfile(path: Path, gguf_file: Path, tokenizer, end_ids: list[int], recipe, add_bos_token: bool | None = None) -> dict:
    """Write the Modelfile at `path` (a run's RunPaths.modelfile) for `gguf_file` (whose add_bos_token,
    when known, is `add_bos_token`); return what was written and the create command."""
    options = recipe.export.ollama
    family = detect_family(tokenizer.chat_template)
    system = options.system or recipe.data.system_prompt or (template_default_system(tokenizer, family) if family else None)
    mismatches = verify_family(tokenizer, family, system, recipe.data.system_prompt) if family else []
    lines = [f"# Ollama Modelfile written by tunekit for run {recipe.run_name} (base {recipe.base_model})", f"FROM ./{gguf_file.name}"]
    if family:
        bos = (tokenizer.bos_token or "") if family.bos and not llama_cpp_adds_bos(tokenizer, add_bos_token) else ""
        lines.append(f"TEMPLATE {_quoted(family.go_template(tokenizer.eos_token or '', bos))}")
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
