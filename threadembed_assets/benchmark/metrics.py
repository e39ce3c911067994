"""Retrieval metrics for one relevant document per query, with bootstrap confidence intervals."""

import numpy as np

METRICS = ("mrr@10", "recall@1", "recall@5", "recall@10", "ndcg@10")


def ranks_of_relevant(scores: np.ndarray, relevant: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each query's relevant document; documents not allowed for a query are never ranked.

    Ties count against the relevant document (a retriever that scores everything alike ranks it last).
    """
    scores = scores.astype(np.float64, copy=True)
    if allowed is not None:
        scores[~allowed] = -np.inf
    target = scores[np.arange(len(relevant)), relevant]
    ahead = (scores > target[:, None]).sum(axis=1)
    ties = (scores == target[:, None]).sum(axis=1) - 1
    return ahead + ties + 1


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query values of every metric from the relevant document's rank."""
    in_top10 = ranks <= 10
    return {
        "mrr@10": np.where(in_top10, 1.0 / ranks, 0.0),
        "recall@1": (ranks <= 1).astype(float),
        "recall@5": (ranks <= 5).astype(float),
        "recall@10": in_top10.astype(float),
        "ndcg@10": np.where(in_top10, 1.0 / np.log2(ranks + 1), 0.0),
    }


def summarize(ranks: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Metric -> (mean, 95% CI low, 95% CI high) by bootstrap over queries."""
    values = per_query(ranks)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(ranks), size=(n_bootstrap, len(ranks))) if len(ranks) else None
    out = {}
    for name, vector in values.items():
        if resamples is None:
            out[name] = (0.0, 0.0, 0.0)
            continue
        means = vector[resamples].mean(axis=1)
        out[name] = (float(vector.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
    return out
