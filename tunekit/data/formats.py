"""Row formats and their conversion to one canonical form.

Accepted formats, detected per row by their keys:

- `messages`: `{"messages": [{"role", "content", "weight"?}, ...]}` (OpenAI chat; `weight` 0/1 on
  assistant messages says whether that turn is trained on)
- `sharegpt`: `{"conversations": [{"from": human|gpt|system|user|assistant, "value"}, ...], "system"?}`
- `alpaca`: `instruction`, optional `input`, `output`, optional `system`
- `prompt_completion`: `prompt` and `completion` (strings, or message lists), optional `system`
- `preference`: `prompt`, `chosen`, `rejected` (strings or message lists; without `prompt`, the
  messages `chosen` and `rejected` start with are the prompt)
- `text`: `{"text": str}` for continued pre-training

The first four are chat rows and become a list of `{"role", "content"}` messages. Preference rows
become `{"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}`; text rows
become `{"text": str}`.
"""

from __future__ import annotations

from dataclasses import dataclass

MESSAGES, SHAREGPT, ALPACA, PROMPT_COMPLETION, PREFERENCE, TEXT = (
    "messages", "sharegpt", "alpaca", "prompt_completion", "preference", "text",
)  # fmt: skip
FORMATS = (MESSAGES, SHAREGPT, ALPACA, PROMPT_COMPLETION, PREFERENCE, TEXT)
CHAT, PREFERENCE_KIND, TEXT_KIND = "chat", "preference", "text"
KIND_OF = {MESSAGES: CHAT, SHAREGPT: CHAT, ALPACA: CHAT, PROMPT_COMPLETION: CHAT, PREFERENCE: PREFERENCE_KIND, TEXT: TEXT_KIND}
# The kind of row each train.method learns from; the data stage and the trainers both read it.
KIND_FOR_METHOD = {"sft": CHAT, "dpo": PREFERENCE_KIND, "cpt": TEXT_KIND}
METHOD_FOR_KIND = {kind: method for method, kind in KIND_FOR_METHOD.items()}
# How each format is named in messages to the user.
LABEL = {
    MESSAGES: "chat `messages`",
    SHAREGPT: "ShareGPT `conversations`",
    ALPACA: "alpaca `instruction/output`",
    PROMPT_COMPLETION: "`prompt/completion`",
    PREFERENCE: "preference `prompt/chosen/rejected`",
    TEXT: "raw `text`",
}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ALPACA_FIELDS = ("instruction", "input", "output", "system")

# Row keys each format understands; anything else is ignored and counted in the report.
KNOWN_KEYS = {
    MESSAGES: {"messages"},
    SHAREGPT: {"conversations", "system"},
    ALPACA: set(ALPACA_FIELDS),
    PROMPT_COMPLETION: {"prompt", "completion", "system"},
    PREFERENCE: {"prompt", "chosen", "rejected", "system"},
    TEXT: {"text"},
}
# Keys whose presence marks a format. `text` only counts when no other format matches, because
# alpaca exports often carry a pre-rendered `text` column beside instruction/output.
_SIGNATURE = {
    MESSAGES: ("messages",),
    SHAREGPT: ("conversations",),
    ALPACA: ("instruction", "output"),
    PREFERENCE: ("chosen", "rejected"),
    PROMPT_COMPLETION: ("prompt", "completion"),
    TEXT: ("text",),
}


@dataclass
class RowProblem(Exception):
    """Why one input row cannot be used: a reason code and a human explanation."""

    reason: str
    detail: str


@dataclass
class Converted:
    """A row in canonical form. `messages` is a flat view of every message of the row, so the
    text-based stages (dedup, PII, near-dup, analysis) read all its text the same way:

    - chat: the conversation itself;
    - preference: prompt, then rejected, then chosen (the last message is the preferred answer;
      `n_rejected`/`n_chosen` count the two tails, so a system message prepended stays in the prompt);
    - text: one user message holding the text.
    """

    kind: str
    messages: list[dict]
    n_rejected: int = 0
    n_chosen: int = 0


def matching_formats(row: dict) -> list[str]:
    """Every format whose marking keys the row has (preference wins over prompt/completion)."""
    found = [fmt for fmt, keys in _SIGNATURE.items() if fmt != TEXT and any(k in row for k in keys)]
    if PREFERENCE in found and PROMPT_COMPLETION in found and "completion" not in row:
        found.remove(PROMPT_COMPLETION)  # `prompt` belongs to the preference row
    if not found and "text" in row:
        found = [TEXT]
    return found


def detect_format(row: dict, setting: str = "auto") -> str:
    """The format of a JSON object, or a RowProblem saying why it has none or several."""
    found = matching_formats(row)
    if setting != "auto" and (setting in found or (setting == TEXT and "text" in row)):
        return setting  # the recipe decides between formats the row could be read as
    if len(found) > 1:
        names = " and ".join(LABEL[f] for f in found)
        raise RowProblem("unknown_format", f"row has fields of several formats ({names}); keep one format")
    if not found:
        keys = ", ".join(sorted(row)[:6]) or "none"
        raise RowProblem(
            "unknown_format",
            "row matches no format (messages, conversations, instruction/output, prompt/completion, "
            f"prompt/chosen/rejected, text); its keys: {keys}",
        )
    if setting != "auto":
        raise RowProblem("unknown_format", f"row is in {found[0]} format but the recipe sets data.format: {setting}")
    return found[0]


# --- single fields and messages ----------------------------------------------------------------


def _text_field(row: dict, name: str, required: bool, fmt: str = "alpaca") -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise RowProblem("missing_field", f"{fmt} row has no `{name}`")
        return ""
    if not isinstance(value, str):
        raise RowProblem("non_string_content", f"`{name}` must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowProblem("empty_content", f"`{name}` is empty")
    return value


def _check_weight(where: str, role: str, weight) -> int:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        raise RowProblem("bad_weight", f"{where}.weight is {weight!r}; it must be 0 or 1")
    if role != "assistant":
        raise RowProblem("bad_weight", f"{where} is a {role} message; only assistant messages take a weight")
    return int(weight)


def _check_message(where: str, message, role_map: dict | None = None, allow_weight: bool = True) -> dict:
    """A `{role, content}` message (ShareGPT's `from`/`value` when `role_map` is given)."""
    role_key, content_key = ("role", "content")
    if role_map is not None and isinstance(message, dict) and ("from" in message or "value" in message):
        role_key, content_key = ("from", "value")
    if not isinstance(message, dict):
        raise RowProblem("missing_field", f"{where} must be an object with `{role_key}` and `{content_key}`, got {type(message).__name__}")
    for name in (role_key, content_key):
        if name not in message:
            raise RowProblem("missing_field", f"{where} has no `{name}`")
    role, content = message[role_key], message[content_key]
    allowed = role_map if role_map is not None else {r: r for r in ROLES}
    if not isinstance(role, str) or role not in allowed:
        raise RowProblem("bad_role", f"{where}.{role_key} is {role!r}; allowed roles: {', '.join(allowed)}")
    role = allowed[role]
    if not isinstance(content, str):
        raise RowProblem("non_string_content", f"{where}.{content_key} must be a string, got {type(content).__name__}")
    if not content.strip():
        raise RowProblem("empty_content", f"{where} ({role}) has empty content")
    out = {"role": role, "content": content}
    if allow_weight and message.get("weight") is not None:
        out["weight"] = _check_weight(where, role, message["weight"])
    return out


def _message_list(name: str, value, role_map: dict | None = None, allow_weight: bool = True) -> list[dict]:
    if not isinstance(value, list):
        raise RowProblem("missing_field", f"`{name}` must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RowProblem("missing_field", f"`{name}` is an empty list")
    return [_check_message(f"{name}[{i}]", m, role_map, allow_weight) for i, m in enumerate(value)]


def _check_order(messages: list[dict], name: str = "messages") -> None:
    """System only first; then user and assistant alternate, starting with user, ending with assistant."""
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            raise RowProblem("role_order", f"{name}[{i}] is a system message; only the first message may be system")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns:
        raise RowProblem("last_not_assistant", "row has only a system message; it needs a user and an assistant turn")
    offset = len(roles) - len(turns)
    if turns[0] != "user":
        raise RowProblem("role_order", f"{name}[{offset}] is {turns[0]}; the first non-system turn must be user")
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1]:
            raise RowProblem("role_order", f"{name}[{offset + i - 1}] and {name}[{offset + i}] are both {turns[i]}; turns must alternate")
    if turns[-1] != "assistant":
        raise RowProblem("last_not_assistant", f"the last message is {turns[-1]}; it must be the assistant's answer to learn from")


def _check_weights_train_something(messages: list[dict]) -> None:
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        raise RowProblem("bad_weight", "every assistant message has weight 0; the row has nothing to learn from")


def _check_prompt(prompt: list[dict]) -> None:
    """A prompt: optional system first, then alternating turns from user to user."""
    for i, message in enumerate(prompt):
        if message["role"] == "system" and i > 0:
            raise RowProblem("role_order", f"prompt[{i}] is a system message; only the first message may be system")
    offset = 1 if prompt[0]["role"] == "system" else 0
    if offset == len(prompt):
        raise RowProblem("role_order", "`prompt` has only a system message; it needs a user turn")
    if prompt[offset]["role"] != "user":
        raise RowProblem("role_order", f"prompt[{offset}] is {prompt[offset]['role']}; the first non-system turn must be user")
    _check_alternation(prompt, "prompt", offset)
    if prompt[-1]["role"] != "user":
        raise RowProblem("role_order", f"prompt[{len(prompt) - 1}] is assistant; the prompt must end with a user turn")


def _check_answer(answer: list[dict], name: str) -> None:
    """An answer: alternating turns from assistant to assistant, no system message."""
    for i, message in enumerate(answer):
        if message["role"] == "system":
            raise RowProblem("role_order", f"{name}[{i}] is a system message; `{name}` holds only the answer")
    if answer[0]["role"] != "assistant":
        raise RowProblem("role_order", f"{name}[0] is {answer[0]['role']}; `{name}` must start with the assistant's answer")
    _check_alternation(answer, name, 0)
    if answer[-1]["role"] != "assistant":
        raise RowProblem("last_not_assistant", f"the last message of `{name}` is {answer[-1]['role']}; it must be the assistant's")


def _check_alternation(messages: list[dict], name: str, offset: int) -> None:
    for i in range(offset + 1, len(messages)):
        if messages[i]["role"] == messages[i - 1]["role"]:
            raise RowProblem("role_order", f"{name}[{i - 1}] and {name}[{i}] are both {messages[i]['role']}; turns must alternate")


def _prompt_part(row: dict, fmt: str) -> list[dict]:
    value = row.get("prompt")
    if value is None:
        raise RowProblem("missing_field", f"{fmt} row has no `prompt`")
    if isinstance(value, list):
        prompt = _message_list("prompt", value, allow_weight=False)
        _check_prompt(prompt)
        return prompt
    return [{"role": "user", "content": _text_field(row, "prompt", required=True, fmt=fmt)}]


def _answer_part(row: dict, name: str, fmt: str) -> list[dict]:
    value = row.get(name)
    if isinstance(value, list):
        answer = _message_list(name, value, allow_weight=False)
        _check_answer(answer, name)
        return answer
    return [{"role": "assistant", "content": _text_field(row, name, required=True, fmt=fmt)}]


def _with_row_system(row: dict, messages: list[dict], fmt: str, first: str) -> list[dict]:
    """Prepend a row-level `system` field; refuse it when the messages already start with one."""
    system = _text_field(row, "system", required=False, fmt=fmt)
    if not system.strip():
        return messages
    if messages[0]["role"] == "system":
        raise RowProblem("role_order", f"row has a `system` field and {first} is a system message too; keep one")
    return [{"role": "system", "content": system}, *messages]


# --- the formats -------------------------------------------------------------------------------


def chat_to_messages(row: dict) -> list[dict]:
    """Validate an OpenAI-style chat row; messages keep `role`, `content` and a 0/1 `weight`."""
    messages = _message_list("messages", row["messages"])
    _check_order(messages)
    _check_weights_train_something(messages)
    return messages


def sharegpt_to_messages(row: dict) -> list[dict]:
    """ShareGPT `conversations` (from/value; human, gpt, system, user, assistant) as chat messages."""
    messages = _message_list("conversations", row["conversations"], SHAREGPT_ROLES)
    _check_order(messages, "conversations")
    _check_weights_train_something(messages)
    return _with_row_system(row, messages, SHAREGPT, "conversations[0]")


def alpaca_to_messages(row: dict) -> list[dict]:
    """Convert an alpaca row; the user turn is `instruction`, plus a blank line and `input` when given."""
    instruction = _text_field(row, "instruction", required=True)
    output = _text_field(row, "output", required=True)
    extra_input = _text_field(row, "input", required=False)
    system = _text_field(row, "system", required=False)
    user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return messages


def prompt_completion_to_messages(row: dict) -> list[dict]:
    """`prompt` → user turn(s), `completion` → assistant turn(s); strings or message lists."""
    prompt = _prompt_part(row, PROMPT_COMPLETION)
    completion = _answer_part(row, "completion", PROMPT_COMPLETION)
    return _with_row_system(row, [*prompt, *completion], PROMPT_COMPLETION, "prompt[0]")


def _implicit_prompt(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Without `prompt`, the messages `chosen` and `rejected` share up to their last common user turn."""
    chosen = _message_list("chosen", row["chosen"], allow_weight=False)
    rejected = _message_list("rejected", row["rejected"], allow_weight=False)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1
    if not shared:
        raise RowProblem("missing_field", "preference row has no `prompt`, and `chosen` and `rejected` share no opening user turn")
    prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    _check_prompt(prompt)
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer:
            raise RowProblem("missing_field", f"`{name}` has no answer after the prompt it shares with the other side")
        _check_answer(answer, name)
    return prompt, chosen, rejected


def preference_parts(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """A preference row's prompt, chosen and rejected messages."""
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise RowProblem("missing_field", f"preference row has no `{name}`")
    if row.get("prompt") is None and isinstance(row["chosen"], list) and isinstance(row["rejected"], list):
        prompt, chosen, rejected = _implicit_prompt(row)
    else:
        prompt = _prompt_part(row, PREFERENCE)
        chosen = _answer_part(row, "chosen", PREFERENCE)
        rejected = _answer_part(row, "rejected", PREFERENCE)
    if [(m["role"], m["content"].strip()) for m in chosen] == [(m["role"], m["content"].strip()) for m in rejected]:
        raise RowProblem("chosen_equals_rejected", "`chosen` and `rejected` are the same answer; the pair teaches no preference")
    return _with_row_system(row, prompt, PREFERENCE, "prompt[0]"), chosen, rejected


def text_of(row: dict) -> str:
    return _text_field(row, "text", required=True, fmt=TEXT)


_CHAT_CONVERTERS = {
    MESSAGES: chat_to_messages,
    SHAREGPT: sharegpt_to_messages,
    ALPACA: alpaca_to_messages,
    PROMPT_COMPLETION: prompt_completion_to_messages,
}


def convert(row: dict, fmt: str) -> Converted:
    """The canonical form of a row already detected as `fmt`, or a RowProblem."""
    if fmt == PREFERENCE:
        prompt, chosen, rejected = preference_parts(row)
        return Converted(KIND_OF[fmt], [*prompt, *rejected, *chosen], n_rejected=len(rejected), n_chosen=len(chosen))
    if fmt == TEXT:
        return Converted(KIND_OF[fmt], [{"role": "user", "content": text_of(row)}])
    messages = _CHAT_CONVERTERS[fmt](row)
    _check_order(messages)
    return Converted(KIND_OF[fmt], messages)


def row_kind(row: dict) -> str:
    """The kind of a row in canonical form (a prepared split's row): chat, preference or text."""
    if "messages" in row:
        return CHAT
    return PREFERENCE_KIND if "chosen" in row else TEXT_KIND


def to_messages(row: dict, fmt: str) -> list[dict]:
    """Canonical messages of a chat row already detected as `fmt`, or a RowProblem."""
    return convert(row, fmt).messages


_MESSAGE_KEYS = {"role", "content", "weight"}
_LIST_KEYS = {
    MESSAGES: {"messages": _MESSAGE_KEYS},
    SHAREGPT: {"conversations": {"from", "value", *_MESSAGE_KEYS}},
    PROMPT_COMPLETION: {"prompt": {"role", "content"}, "completion": {"role", "content"}},
    PREFERENCE: {"prompt": {"role", "content"}, "chosen": {"role", "content"}, "rejected": {"role", "content"}},
}


def ignored_keys(row: dict, fmt: str) -> list[str]:
    """Row keys (and message keys) this format does not use, so the report can say they were dropped."""
    keys = [k for k in row if k not in KNOWN_KEYS[fmt]]
    for name, allowed in _LIST_KEYS.get(fmt, {}).items():
        if isinstance(row.get(name), list):
            for message in row[name]:
                if isinstance(message, dict):
                    keys += [f"{name}[].{k}" for k in message if k not in allowed]
    return keys


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend the recipe's system prompt to an example that has no system message."""
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
