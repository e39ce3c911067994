"""Scoring: every retriever of every model on every task, as rows of `benchmark_scores`."""

import numpy as np

from threadembed_assets.benchmark.metrics import per_query, ranks_of_relevant, summarize
from threadembed_assets.benchmark.retrievers import (
    EmbeddingCache,
    bm25_scores,
    dense_scores,
    encode_task,
    line_windows,
    model_key,
    rrf_scores,
    time_prior,
    windowed_scores,
)
from threadembed_assets.benchmark.tasks import Task
from threadembed_assets.training.train import load_model, matryoshka_dims

TIME_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4)
DEFAULT_TIME_WEIGHT = 0.1


def score_rows(model: str, retriever: str, dim: int | None, task: Task, scores: np.ndarray, n_bootstrap: int) -> list:
    """Metric rows of one retriever's scores on one task."""
    ranks = ranks_of_relevant(scores, np.array(task.relevant), task.allowed())
    return [
        {
            "model": model,
            "retriever": retriever,
            "task": task.name,
            "source": task.source,
            "dim": dim,
            "metric": metric,
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "queries": len(task.queries),
        }
        for metric, (value, low, high) in summarize(ranks, n_bootstrap).items()
    ]


def mean_mrr(tasks: list[Task], scores: list[np.ndarray]) -> float:
    """MRR@10 over all queries of `tasks`."""
    values = [
        per_query(ranks_of_relevant(s, np.array(t.relevant), t.allowed()))["mrr@10"]
        for t, s in zip(tasks, scores, strict=True)
        if t.queries
    ]
    return float(np.concatenate(values).mean()) if values else 0.0


def tune_time_weight(
    model, key: str, dev_tasks: list[Task], cache: EmbeddingCache, batch_size: int, scale_s: float
) -> float:
    """The time-prior weight with the best mean MRR@10 on dev tasks that have times."""
    timed = [t for t in dev_tasks if any(ts is not None for ts in t.query_ts)]
    if not timed:
        return DEFAULT_TIME_WEIGHT
    dense = [dense_scores(*encode_task(model, key, t, cache, batch_size)) for t in timed]
    priors = [time_prior(t, scale_s) for t in timed]
    return max(TIME_WEIGHTS, key=lambda w: mean_mrr(timed, [d + w * p for d, p in zip(dense, priors, strict=True)]))


def score_all(
    tasks: list[Task],
    models: dict[str, str],
    cache: EmbeddingCache,
    *,
    device: str,
    batch_size: int,
    with_bm25: bool = True,
    dev_tasks: list[Task] | None = None,
    time_scale_s: float = 3600.0,
    n_bootstrap: int = 1000,
    log=print,
) -> tuple[list[dict], dict[str, float]]:
    """Rows for BM25 and, per model, dense at every Matryoshka dimension; dense over windows, hybrid and time-aware
    at full dimension.

    Returns the rows and the time-prior weight chosen per model (tuned on `dev_tasks` when given).
    """
    rows: list[dict] = []
    bm25 = {id(task): bm25_scores(task) for task in tasks}
    if with_bm25:
        for task in tasks:
            rows += score_rows("bm25", "bm25", None, task, bm25[id(task)], n_bootstrap)
    weights = {}
    for name, path in models.items():
        model, key = load_model(path, device), model_key(path)
        dims = matryoshka_dims(model.get_embedding_dimension())
        weights[name] = (
            tune_time_weight(model, key, dev_tasks, cache, batch_size, time_scale_s)
            if dev_tasks
            else DEFAULT_TIME_WEIGHT
        )
        for task in tasks:
            queries, docs = encode_task(model, key, task, cache, batch_size)
            full = dense_scores(queries, docs)
            for dim in dims:
                rows += score_rows(name, "dense", dim, task, dense_scores(queries, docs, dim), n_bootstrap)
            windows, owners = line_windows(task.docs)
            by_window = dense_scores(queries, cache.encode(model, key, windows, batch_size))
            rows += score_rows(
                name, "dense_windows", dims[0], task, windowed_scores(full, by_window, owners), n_bootstrap
            )
            rows += score_rows(
                name, "hybrid", dims[0], task, rrf_scores(full, bm25[id(task)], allowed=task.allowed()), n_bootstrap
            )
            if any(ts is not None for ts in task.query_ts):
                timed = full + weights[name] * time_prior(task, time_scale_s)
                rows += score_rows(name, "time_aware", dims[0], task, timed, n_bootstrap)
        log(f"scored {name} ({path}) on {len(tasks)} tasks; time weight {weights[name]}")
    return rows, weights


def headline(rows: list[dict], metric: str = "mrr@10") -> dict[tuple[str, str], dict[str, float]]:
    """(model, retriever) -> task -> `metric` at the model's full dimension, averaged over sources by queries."""
    full_dim: dict[str, int] = {}
    for row in rows:
        if row["retriever"] == "dense":
            full_dim[row["model"]] = max(full_dim.get(row["model"], 0), row["dim"])
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in rows:
        if row["metric"] != metric or (row["retriever"] == "dense" and row["dim"] != full_dim[row["model"]]):
            continue
        cell = sums.setdefault((row["model"], row["retriever"]), {}).setdefault(row["task"], [0.0, 0])
        cell[0] += row["value"] * row["queries"]
        cell[1] += row["queries"]
    return {key: {task: total / n for task, (total, n) in by_task.items() if n} for key, by_task in sums.items()}


def results_markdown(rows: list[dict], metric: str = "mrr@10") -> str:
    """A markdown table of `metric` per model and retriever (full dimension) and task."""
    table = headline(rows, metric)
    tasks = sorted({task for by_task in table.values() for task in by_task})
    lines = [f"| model | retriever | {' | '.join(tasks)} |", "|---|---|" + "---|" * len(tasks)]
    for (model, retriever), by_task in table.items():
        values = [f"{by_task[t]:.3f}" if t in by_task else "-" for t in tasks]
        lines.append(f"| {model} | {retriever} | {' | '.join(values)} |")
    return "\n".join(lines)
