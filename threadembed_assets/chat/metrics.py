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


def bootstrap_means(
    values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, clusters: np.ndarray | None = None
) -> np.ndarray:
    """Means of `values` over bootstrap resamples: of queries, or, where `clusters` labels each query (its channel
    and day), of whole clusters, since queries of one channel-day are not independent of each other."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        return values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    _, label = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    sums, counts = np.bincount(label, weights=values), np.bincount(label)
    picks = rng.integers(0, len(sums), size=(n_bootstrap, len(sums)))
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


def bootstrap_interval(
    values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, clusters: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Mean of per-query values and its bootstrap 95% interval (over clusters of queries where given)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return 0.0, 0.0, 0.0
    means = bootstrap_means(values, n_bootstrap, seed, clusters)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(
    ranks: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, clusters: np.ndarray | None = None
) -> dict[str, tuple[float, float, float]]:
    """Metric -> (mean, 95% CI low, 95% CI high) by bootstrap over queries, or over their `clusters` (one set of
    resamples for every metric: the same seed draws the same resamples)."""
    return {name: bootstrap_interval(vector, n_bootstrap, seed, clusters) for name, vector in per_query(ranks).items()}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of p-values for testing them together: a verdict whose adjusted p-value is below
    alpha keeps the family-wise error rate at alpha over every comparison of its table."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted


def paired_test(a: np.ndarray, b: np.ndarray, n_resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Mean of `a - b` over the same queries and its two-sided p-value by a paired randomization test: under the
    null hypothesis each query's difference is as likely to have the other sign."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(diff):
        return 0.0, 1.0
    observed = diff.mean()
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_resamples, len(diff)))
    null = (signs * diff).mean(axis=1)
    p_value = (np.count_nonzero(np.abs(null) >= abs(observed) - 1e-12) + 1) / (n_resamples + 1)
    return float(observed), float(p_value)


def verdict(delta: float, p_value: float, alpha: float = 0.05) -> str:
    """`win` or `loss` where the paired difference is significant at 1 - alpha, else `tie`."""
    if p_value >= alpha or delta == 0:
        return "tie"
    return "win" if delta > 0 else "loss"
