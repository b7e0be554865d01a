"""Input formats and their conversion to canonical chat messages.

Two formats are accepted: chat rows (`{"messages": [{"role", "content"}, ...]}`) and alpaca rows
(`instruction`, optional `input`, `output`, optional `system`). Every row becomes a list of
`{"role", "content"}` messages; that canonical form is what the later stages read.
"""

from __future__ import annotations

from dataclasses import dataclass

MESSAGES = "messages"
ALPACA = "alpaca"
ROLES = ("system", "user", "assistant")
ALPACA_FIELDS = ("instruction", "input", "output", "system")

# Row keys each format understands; anything else is ignored and counted in the report.
KNOWN_KEYS = {MESSAGES: {"messages"}, ALPACA: set(ALPACA_FIELDS)}


@dataclass
class RowProblem(Exception):
    """Why one input row cannot be used: a reason code and a human explanation."""

    reason: str
    detail: str


def detect_format(row: dict) -> str:
    """Which format a JSON object is in, or a RowProblem saying why it is neither or both."""
    has_messages = "messages" in row
    has_alpaca = "instruction" in row or "output" in row
    if has_messages and has_alpaca:
        raise RowProblem("unknown_format", "row has both `messages` and alpaca fields (instruction/output); keep one format")
    if has_messages:
        return MESSAGES
    if has_alpaca:
        return ALPACA
    keys = ", ".join(sorted(row)[:6]) or "none"
    raise RowProblem(
        "unknown_format",
        f"row is neither chat (`messages`) nor alpaca (`instruction` + `output`); its keys: {keys}",
    )


def _text_field(row: dict, name: str, required: bool) -> str:
    if name not in row or (row[name] is None and not required):
        if required:
            raise RowProblem("missing_field", f"alpaca row has no `{name}`")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise RowProblem("non_string_content", f"`{name}` must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowProblem("empty_content", f"`{name}` is empty")
    return value


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


def _check_message(index: int, message) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RowProblem("missing_field", f"{where} must be an object with `role` and `content`, got {type(message).__name__}")
    for field in ("role", "content"):
        if field not in message:
            raise RowProblem("missing_field", f"{where} has no `{field}`")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise RowProblem("bad_role", f"{where}.role is {role!r}; allowed roles: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise RowProblem("non_string_content", f"{where}.content must be a string, got {type(content).__name__}")
    if not content.strip():
        raise RowProblem("empty_content", f"{where} ({role}) has empty content")
    return {"role": role, "content": content}


def _check_order(messages: list[dict]) -> None:
    """System only first; then user and assistant alternate, starting with user, ending with assistant."""
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            raise RowProblem("role_order", f"messages[{i}] is a system message; only the first message may be system")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns:
        raise RowProblem("last_not_assistant", "row has only a system message; it needs a user and an assistant turn")
    offset = len(roles) - len(turns)
    if turns[0] != "user":
        raise RowProblem("role_order", f"messages[{offset}] is {turns[0]}; the first non-system turn must be user")
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1]:
            raise RowProblem("role_order", f"messages[{offset + i - 1}] and messages[{offset + i}] are both {turns[i]}; turns must alternate")
    if turns[-1] != "assistant":
        raise RowProblem("last_not_assistant", f"the last message is {turns[-1]}; it must be the assistant's answer to learn from")


def chat_to_messages(row: dict) -> list[dict]:
    """Validate a chat row and return its messages reduced to `role` and `content`."""
    raw = row["messages"]
    if not isinstance(raw, list):
        raise RowProblem("missing_field", f"`messages` must be a list of {{role, content}}, got {type(raw).__name__}")
    if not raw:
        raise RowProblem("missing_field", "`messages` is an empty list")
    messages = [_check_message(i, m) for i, m in enumerate(raw)]
    _check_order(messages)
    return messages


def to_messages(row: dict, fmt: str) -> list[dict]:
    """Canonical messages of a row already detected as `fmt`, or a RowProblem."""
    if fmt == MESSAGES:
        return chat_to_messages(row)
    messages = alpaca_to_messages(row)
    _check_order(messages)
    return messages


def ignored_keys(row: dict, fmt: str) -> list[str]:
    """Row keys (and message keys) this format does not use, so the report can say they were dropped."""
    keys = [k for k in row if k not in KNOWN_KEYS[fmt]]
    if fmt == MESSAGES and isinstance(row.get("messages"), list):
        for message in row["messages"]:
            if isinstance(message, dict):
                keys += [f"messages[].{k}" for k in message if k not in ("role", "content")]
    return keys


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend the recipe's system prompt to an example that has no system message."""
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
