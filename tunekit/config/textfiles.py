"""Reading a user's text and YAML files with one clear error for each way it can go wrong: not
there, a directory, unreadable, not UTF-8 (a binary file, a Latin-1 export), invalid YAML; and the
same check, without reading, for the input files a recipe names (`file_problem`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunekit.errors import TunekitError


def read_text(path: Path, what: str, hint: str | None = None) -> str:
    """The file's text; TunekitError naming the file (`what` says which kind of file was expected)."""
    path = Path(path)
    if path.is_dir():
        raise TunekitError(f"{path}: is a directory, not a {what}", hint=hint or f"pass the path of a {what}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TunekitError(f"{path}: {what} not found", hint=hint or f"pass the path of an existing {what}") from None
    except OSError as exc:
        raise TunekitError(f"{path}: cannot read the {what}: {exc.strerror}", hint="check the file's permissions") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        kind = "a binary file" if b"\x00" in raw[:4096] else "not UTF-8 text"
        raise TunekitError(
            f"{path}, line {line}: {kind} (byte 0x{raw[exc.start]:02x} at offset {exc.start}); a {what} must be UTF-8 text",
            hint="save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)" if kind != "a binary file" else f"pass a {what}",
        ) from None


def file_problem(path: Path, *, directory_ok: bool = False) -> str | None:
    """What stops an input file from being read ("file not found: PATH", "cannot read PATH: Permission
    denied"), or None when it can be. A directory passes where `directory_ok` (a saved dataset), and so
    does a path that names no local file (a hub dataset)."""
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return None if directory_ok or not path.is_dir() else f"{path} is a directory, not a file"
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def read_yaml(path: Path, what: str, hint: str | None = None) -> Any:
    """The file's YAML value; TunekitError with the line and column of a syntax error."""
    import yaml

    text = read_text(path, what, hint)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunekitError(f"{path}{where}: invalid YAML: {problem}", hint=hint or f"fix the YAML syntax of the {what}") from None
