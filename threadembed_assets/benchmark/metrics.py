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


def _resamples(n_values: int, n_bootstrap: int, seed: int) -> np.ndarray | None:
    """Bootstrap resamples of query indices (None when there are no queries)."""
    if not n_values:
        return None
    return np.random.default_rng(seed).integers(0, n_values, size=(n_bootstrap, n_values))


def _interval(values: np.ndarray, resamples: np.ndarray | None) -> tuple[float, float, float]:
    if resamples is None:
        return 0.0, 0.0, 0.0
    means = values[resamples].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_interval(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-query values and its bootstrap 95% interval over queries."""
    return _interval(values, _resamples(len(values), n_bootstrap, seed))


def summarize(ranks: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Metric -> (mean, 95% CI low, 95% CI high) by bootstrap over queries (one set of resamples for every metric)."""
    resamples = _resamples(len(ranks), n_bootstrap, seed)
    return {name: _interval(vector, resamples) for name, vector in per_query(ranks).items()}


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
