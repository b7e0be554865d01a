"""Stop strings in streamed text, shared by every backend that decodes tokens itself (hf, llamacpp),
so that all of them cut and hold back text the same way."""

from __future__ import annotations


def stop_cut(text: str, stops: list[str] | None) -> int:
    """Where the earliest stop string begins in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stops or []) if i >= 0), default=-1)


def safe_length(text: str, stops: list[str] | None) -> int:
    """How much of `text` may be sent now: an unfinished UTF-8 character (decoded as U+FFFD) and any
    tail that may still grow into a stop string are held back until the next token decides them."""
    safe = len(text.rstrip("\ufffd"))
    for stop in stops or []:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                safe = min(safe, len(text) - k)
                break
    return safe
