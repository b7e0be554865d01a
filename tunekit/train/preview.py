"""`tunekit data preview`: one example as training sees it, with the tokens the loss is taken on marked.

The example goes through the training code path (tunekit.train.masking, with the recipe's
`data.max_length`), so what is shown is what the trainer gets. The text is cut into segments at
token boundaries: trained, context, and what truncation cuts off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from tunekit.config import Recipe
from tunekit.errors import DataError
from tunekit.runs import RunPaths, read_jsonl
from tunekit.train.masking import encode_chat

TRAINED, CONTEXT, CUT = "trained", "context", "cut"
# Marks for plain output (no terminal colours): trained text sits between them.
OPEN, CLOSE = "⟦", "⟧"
_RAW_KEY = {"train": "train", "val": "eval", "test": "test"}


@dataclass
class PreviewExample:
    messages: list[dict]
    where: str  # e.g. "runs/x/data/train.jsonl row 3 (from train.jsonl line 4)"


@dataclass
class ChatPreview:
    where: str
    segments: list[tuple[str, str]] = field(default_factory=list)  # (text, TRAINED | CONTEXT | CUT)
    n_tokens: int = 0  # tokens training sees (after truncation)
    n_tokens_full: int = 0
    n_trained: int = 0
    max_length: int | None = None
    over_length: str = "truncate"  # data.over_length: what prepare does with an example this long

    @property
    def truncated(self) -> bool:
        return self.n_tokens < self.n_tokens_full


def _pick(rows: list, index: int, what: str):
    if not rows:
        raise DataError(f"{what} has no examples to preview")
    if not -len(rows) <= index < len(rows):
        raise DataError(f"--index {index} is out of range: {what} has {len(rows)} example(s) (0 to {len(rows) - 1})")
    return rows[index]


def _require_chat(row: dict, where: str) -> list[dict]:
    if "messages" not in row:
        kind = "a preference pair" if "chosen" in row else "raw text"
        raise DataError(
            f"{where} is {kind}; the preview shows chat examples with their assistant-only loss mask",
            hint="preview a recipe whose data is chat rows (messages, sharegpt, alpaca or prompt/completion)",
        )
    return row["messages"]


def load_example(recipe: Recipe, run: RunPaths, split: str, index: int) -> PreviewExample:
    """Example `index` of the prepared split when `tunekit data prepare` wrote one, else of the raw file."""
    prepared = run.split(split)
    if prepared.exists():
        row = _pick(read_jsonl(prepared), index, f"{prepared}")
        meta = row.get("meta", {})
        origin = f" (from {meta['source']} line {meta['line']})" if "source" in meta and "line" in meta else ""
        where = f"{prepared} example {index}{origin}"
        return PreviewExample(_require_chat(row, where), where)
    return _raw_example(recipe, split, index)


def _raw_example(recipe: Recipe, split: str, index: int) -> PreviewExample:
    from tunekit.data.formats import with_system_prompt
    from tunekit.data.validate import read_input

    key = _RAW_KEY[split]
    path = getattr(recipe.data, key)
    if path is None:
        raise DataError(
            f"no {split} split to preview: the run has no prepared {split} split and the recipe sets no data.{key}",
            hint="run `tunekit data prepare` first (it holds out val/test from train), or preview --split train",
        )
    source = read_input(key, path, path.name, recipe.data.format)  # a local Path or a hub dataset id
    skipped = f", not counting {len(source.rejected)} invalid row(s)" if source.rejected else ""
    example = _pick(source.examples, index, f"data.{key} ({path}{skipped})")
    where = f"{path} {source.unit} {example.line} (raw data; run `tunekit data prepare` to preview the prepared split)"
    messages = _require_chat(example.payload, where)
    # Prepare adds the recipe's system prompt; do the same so the preview matches training.
    return PreviewExample(with_system_prompt(messages, recipe.data.system_prompt), where)


def preview_chat(tokenizer, example: PreviewExample, max_length: int | None, over_length: str = "truncate") -> ChatPreview:
    """Tokenize `example` as training does and cut its text into trained / context / cut segments."""
    encoded = encode_chat(tokenizer, example.messages)
    kept = len(encoded.input_ids) if max_length is None else min(max_length, len(encoded.input_ids))
    preview = ChatPreview(
        where=example.where,
        n_tokens=kept,
        n_tokens_full=len(encoded.input_ids),
        n_trained=sum(encoded.assistant_masks[:kept]),
        max_length=max_length,
        over_length=over_length,
    )
    position = 0
    for number, ((_, token_end), trained) in enumerate(zip(encoded.offsets, encoded.assistant_masks)):
        kind = CUT if number >= kept else (TRAINED if trained else CONTEXT)
        # A token owns the text since the previous token ended, so characters no token covers are not lost.
        _append(preview.segments, encoded.text[position:token_end], kind)
        position = max(position, token_end)
    _append(preview.segments, encoded.text[position:], CUT if kept < len(encoded.input_ids) else CONTEXT)
    return preview


def _append(segments: list[tuple[str, str]], text: str, kind: str) -> None:
    if not text:
        return
    if segments and segments[-1][1] == kind:
        segments[-1] = (segments[-1][0] + text, kind)
    else:
        segments.append((text, kind))


def summary_line(preview: ChatPreview) -> str:
    cut = "no"
    if preview.truncated:
        cut = f"yes: {preview.n_tokens_full - preview.n_tokens} token(s) past data.max_length={preview.max_length} are cut"
        if preview.over_length != "truncate":
            # Raw rows are previewed before prepare, which applies the length policy.
            cut += f" (with data.over_length: {preview.over_length}, `tunekit data prepare` does not keep this example)"
    return f"tokens: {preview.n_tokens}, trained tokens: {preview.n_trained}, truncated: {cut}"


def plain_text(preview: ChatPreview) -> str:
    """The example with trained text between ⟦ ⟧ and cut text after a marker line, for logs and tests."""
    body = "".join(f"{OPEN}{text}{CLOSE}" if kind == TRAINED else text for text, kind in preview.segments if kind != CUT)
    cut = "".join(text for text, kind in preview.segments if kind == CUT)
    lines = [f"example: {preview.where}", f"trained text is marked {OPEN} {CLOSE}", "", body]
    if cut:
        lines += ["", f"--- cut by data.max_length={preview.max_length} (not seen in training) ---", cut]
    return "\n".join([*lines, "", summary_line(preview)])


def rich_text(preview: ChatPreview):
    """The same content for a terminal: trained text on green, context dimmed, cut text struck through."""
    from rich.text import Text

    styles = {TRAINED: "black on green", CONTEXT: "dim", CUT: "dim strike"}
    out = Text()
    out.append(f"example: {preview.where}\n", style="bold")
    out.append("legend: ")
    out.append("trained", style=styles[TRAINED])
    out.append("  context (no loss)  ", style=styles[CONTEXT])
    out.append("cut by max_length", style=styles[CUT])
    out.append("\n\n")
    for text, kind in preview.segments:
        out.append(text, style=styles[kind])
    out.append(f"\n\n{summary_line(preview)}")
    return out
