"""Diversity of the training prompts: embed the user turns, cluster them, judge the balance.

A dataset whose prompts fall mostly into one cluster teaches one kind of request well and the
rest poorly; the verdict flags that before any GPU time is spent.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from tunekit.data.semantic import embed, missing_extra, row_text, user_text
from tunekit.data.validate import Example

# Verdict thresholds. With k clusters a perfectly even dataset has a largest share of 1/k and a
# normalised entropy of 1. GOOD asks that no single cluster (one kind of prompt) holds more than
# 30% of the rows, and that the cluster sizes stay close to even (normalised entropy >= 0.75,
# e.g. 10 clusters where one holds 30% and the rest share 70% evenly scores ~0.93, while one
# holding 80% scores ~0.41).
MAX_LARGEST_CLUSTER_SHARE = 0.30
MIN_NORMALIZED_ENTROPY = 0.75
# KMeans always finds k clusters, even in paraphrases of one request, and those can come out
# evenly sized. So the prompts must also be far apart on average: with MiniLM, unrelated
# sentences sit at a cosine distance of ~0.9 and paraphrases of one request at ~0.3; below 0.5
# the "clusters" are shades of one topic.
MIN_MEAN_PAIRWISE_DISTANCE = 0.5
# Below this many rows clusters say nothing; the verdict is TOO_FEW and nothing is clustered.
MIN_ROWS = 10
MAX_CLUSTERS = 50
# Mean pairwise distance is O(n^2); a seeded sample of this size estimates it well.
DISTANCE_SAMPLE = 2000


def default_clusters(n_rows: int) -> int:
    """About sqrt(n/2) clusters (a common rule of thumb), kept within 2..50."""
    return min(MAX_CLUSTERS, max(2, round(math.sqrt(n_rows / 2))))


def normalized_entropy(sizes: list[int]) -> float:
    """Shannon entropy of the cluster-size distribution divided by its maximum, log(k): 1 is perfectly even."""
    if len(sizes) < 2:
        return 0.0
    total = sum(sizes)
    shares = [s / total for s in sizes if s > 0]
    return -sum(p * math.log(p) for p in shares) / math.log(len(sizes))


def risks(largest_share: float, entropy: float, mean_distance: float) -> list[str]:
    """Why the prompts are not diverse enough; empty means the verdict is GOOD."""
    found = []
    if largest_share > MAX_LARGEST_CLUSTER_SHARE:
        found.append(f"the largest cluster holds {largest_share:.0%} of the rows (more than {MAX_LARGEST_CLUSTER_SHARE:.0%})")
    if entropy < MIN_NORMALIZED_ENTROPY:
        found.append(f"cluster sizes are uneven (normalised entropy {entropy:.2f} < {MIN_NORMALIZED_ENTROPY})")
    if mean_distance < MIN_MEAN_PAIRWISE_DISTANCE:
        found.append(f"prompts are alike (mean cosine distance {mean_distance:.2f} < {MIN_MEAN_PAIRWISE_DISTANCE})")
    return found


def _mean_pairwise_distance(vectors, seed: int) -> float:
    import numpy as np

    if len(vectors) > DISTANCE_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(vectors), DISTANCE_SAMPLE, replace=False)
        vectors = vectors[pick]
    n = len(vectors)
    similarity = vectors @ vectors.T
    # Mean over distinct pairs: drop the diagonal (each row with itself, similarity 1).
    mean_similarity = (similarity.sum() - np.trace(similarity)) / (n * (n - 1))
    return round(float(1.0 - mean_similarity), 4)


def _cluster(vectors, n_clusters: int, seed: int):
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        raise missing_extra("data.analysis.diversity", exc) from exc
    with warnings.catch_warnings():
        # Repeated prompts can leave fewer distinct points than clusters; the sizes show it, the warning is noise.
        warnings.simplefilter("ignore")
        return KMeans(n_clusters=n_clusters, random_state=seed, n_init=4).fit_predict(vectors)


def plot_scatter(vectors, labels, path: Path, title: str) -> None:
    """2-D PCA projection of the embeddings, one colour per cluster."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=0).fit_transform(vectors)
    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)  # attaches a non-interactive canvas: no display needed
    axes = figure.add_subplot()
    axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=12, alpha=0.8)
    axes.set_title(title)
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def analyse_diversity(examples: list[Example], n_clusters: int | None, seed: int, plot_path: Path) -> dict:
    """Cluster the user turns of `examples` and judge their spread; writes the scatter plot to `plot_path`."""
    plot_path.unlink(missing_ok=True)  # never leave an older run's picture next to this report
    # Rows without a user turn (raw pre-training text) are judged by their whole text.
    texts = [user_text(e.messages) or row_text(e.messages) for e in examples]
    thresholds = {
        "max_largest_cluster_share": MAX_LARGEST_CLUSTER_SHARE,
        "min_normalized_entropy": MIN_NORMALIZED_ENTROPY,
        "min_mean_pairwise_cosine_distance": MIN_MEAN_PAIRWISE_DISTANCE,
    }
    result: dict = {"rows": len(texts), "thresholds": thresholds}
    if len(texts) < MIN_ROWS:
        return {**result, "verdict": "TOO_FEW", "reason": f"fewer than {MIN_ROWS} training rows to cluster"}
    vectors = embed(texts)
    k = min(n_clusters or default_clusters(len(texts)), len(texts))
    labels = _cluster(vectors, k, seed)
    sizes = [int((labels == c).sum()) for c in range(k)]
    largest_share = max(sizes) / len(texts)
    entropy = normalized_entropy(sizes)
    mean_distance = _mean_pairwise_distance(vectors, seed)
    found = risks(largest_share, entropy, mean_distance)
    judged = "RISKY" if found else "GOOD"
    plot_scatter(vectors, labels, plot_path, f"User turns: {k} clusters, {judged}")
    return {
        **result,
        "clusters": k,
        "cluster_sizes": sorted(sizes, reverse=True),
        "largest_cluster_share": round(largest_share, 4),
        "normalized_entropy": round(entropy, 4),
        "mean_pairwise_cosine_distance": mean_distance,
        "verdict": judged,
        "risks": found,
        "plot": str(plot_path),
    }
