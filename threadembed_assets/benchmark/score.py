"""Scoring: every retriever of every model, and the baselines (BM25, recency), on every task; metric rows with
bootstrap intervals, and paired verdicts against BM25 and the base model on the same queries."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threadembed_assets.chat.metrics import (
    bootstrap_interval,
    holm,
    paired_test,
    per_query,
    ranks_of_relevant,
    summarize,
    verdict,
)
from threadembed_assets.chat.ranker import CHAT_RANKER, UNGATED, ChatRanker, gated, is_gated, model_features
from threadembed_assets.chat.retrievers import (
    EmbeddingCache,
    bm25_scores,
    dense_scores,
    encode_task,
    line_windows,
    model_key,
    pooled_vectors,
    recency_scores,
    rrf_scores,
    time_prior,
    windowed_scores,
)
from threadembed_assets.chat.task import THREAD_KINDS, Task, task_kind, task_platform
from threadembed_assets.training.train import load_model, matryoshka_dims
from threadembed_assets.warehouse.provenance import read_provenance

TIME_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.4)
DEFAULT_TIME_WEIGHT = 0.1
BASELINES = ("bm25", "recency")
BASE_MODEL = "base"


class TrainingLeak(ValueError):
    """A model learned from conversations that give benchmark queries."""


@dataclass
class Scored:
    """One retriever of one model on one task: the rank of each query's relevant document."""

    model: str
    retriever: str
    dim: int | None
    task: Task
    ranks: np.ndarray
    setting: str | None = None  # `transfer` / `in-domain` for a trained model on a `<task>@<platform>` task
    full_dim: bool = True  # False for the truncated Matryoshka dimensions
    text_model: str | None = None  # the chat ranker: the scored model whose similarity it reads

    def mrr(self) -> np.ndarray:
        return per_query(self.ranks)["mrr@10"]


def scored(model: str, retriever: str, dim: int | None, task: Task, scores: np.ndarray, **extra) -> Scored:
    return Scored(
        model, retriever, dim, task, ranks_of_relevant(scores, np.array(task.relevant), task.allowed()), **extra
    )


def mean_mrr(tasks: list[Task], scores: list[np.ndarray]) -> float:
    """MRR@10 over all queries of `tasks`."""
    values = [
        per_query(ranks_of_relevant(s, np.array(t.relevant), t.allowed()))["mrr@10"]
        for t, s in zip(tasks, scores, strict=True)
        if t.queries
    ]
    return float(np.concatenate(values).mean()) if values else 0.0


def tune_time_weight(
    model, key: str, dev_tasks: list[Task], cache: EmbeddingCache, batch_size: int, priors: dict[int, np.ndarray]
) -> float:
    """The time-prior weight with the best mean MRR@10 on dev tasks that have times (`priors`: by task id)."""
    timed = [t for t in dev_tasks if t.has_times()]
    if not timed:
        return DEFAULT_TIME_WEIGHT
    dense = [dense_scores(*encode_task(model, key, t, cache, batch_size)) for t in timed]
    timed_priors = [priors[id(t)] for t in timed]
    return max(
        TIME_WEIGHTS, key=lambda w: mean_mrr(timed, [d + w * p for d, p in zip(dense, timed_priors, strict=True)])
    )


def leaked_queries(provenance: dict | None, tasks: list[Task]) -> int:
    """How many queries of `tasks` come from a conversation the model learned from."""
    if not provenance:
        return 0
    learned = set(provenance.get("conversation_keys", []))
    return sum(key in learned for task in tasks for key in task.conversation_keys or [])


def refuse_leaks(models: dict[str, str], tasks: list[Task]) -> None:
    """Raise `TrainingLeak` when a model trained on a conversation that gives a query of `tasks`."""
    for name, path in models.items():
        provenance = read_provenance(path)
        leaked = leaked_queries(provenance, tasks)
        if leaked:
            raise TrainingLeak(
                f"{name} ({path}) learned from the conversations of {leaked} benchmark queries (training "
                f"conversations fingerprint {provenance['fingerprint']}): its scores would measure recall, not "
                "retrieval. Score it on conversations it never saw (another file, or the test split of the data it "
                "trained on, with the same split settings), or retrain it."
            )


def setting_of(provenance: dict | None, task: Task) -> str | None:
    """`transfer` when a trained model never saw the platform of a `<task>@<platform>` task, else `in-domain`."""
    platform = task_platform(task.name)
    if platform is None or provenance is None:
        return None
    return "in-domain" if platform in provenance.get("platforms", []) else "transfer"


def score_baselines(tasks: list[Task], bm25: dict[int, np.ndarray]) -> list[Scored]:
    """BM25 on every task (`bm25`: its scores by task id), and recency on every task with a time context."""
    results = [scored("bm25", "bm25", None, task, bm25[id(task)]) for task in tasks]
    results += [
        scored("recency", "recency", None, task, recency_scores(task)) for task in tasks if task.has_time_context()
    ]
    return results


def score_model(
    name: str,
    path: str,
    tasks: list[Task],
    cache: EmbeddingCache,
    *,
    device: str,
    batch_size: int,
    bm25: dict[int, np.ndarray],
    priors: dict[int, np.ndarray],
    dev_tasks: list[Task] | None,
) -> tuple[list[Scored], float]:
    """Dense at every Matryoshka dimension; hybrid, time-aware (where times are known) and, on thread tasks, dense
    over windows at full dimension (a window is the mean of its messages' vectors, `retrievers.pooled_vectors`, so
    a message is encoded once for every window it falls in and for the chat ranker). `bm25` and the time `priors`
    (of test and dev tasks) are by task id: they do not depend on the model."""
    model, key = load_model(path, device), model_key(path)
    provenance = read_provenance(path)
    dims = matryoshka_dims(model.get_embedding_dimension())
    weight = tune_time_weight(model, key, dev_tasks, cache, batch_size, priors) if dev_tasks else DEFAULT_TIME_WEIGHT
    results = []
    for task in tasks:
        setting = setting_of(provenance, task)
        queries, docs = encode_task(model, key, task, cache, batch_size)
        full = dense_scores(queries, docs)
        results += [
            scored(name, "dense", dim, task, dense_scores(queries, docs, dim), setting=setting, full_dim=dim == dims[0])
            for dim in dims
        ]
        if task_kind(task.name) in THREAD_KINDS:  # a response candidate is one window already, a summary of the whole
            windows, owners = line_windows(task.docs)
            by_window = dense_scores(queries, pooled_vectors(model, key, windows, cache, batch_size))
            by_windows = windowed_scores(full, by_window, owners)
            results.append(scored(name, "dense_windows", dims[0], task, by_windows, setting=setting))
        fused = rrf_scores(full, bm25[id(task)], allowed=task.allowed())
        results.append(scored(name, "hybrid", dims[0], task, fused, setting=setting))
        if task.has_times():
            timed = full + weight * priors[id(task)]
            results.append(scored(name, "time_aware", dims[0], task, timed, setting=setting))
    return results, weight


def score_all(
    tasks: list[Task],
    models: dict[str, str],
    cache: EmbeddingCache,
    *,
    device: str,
    batch_size: int,
    dev_tasks: list[Task] | None = None,
    time_scale_s: float = 3600.0,
    ranker_dir: str | None = None,
    log=print,
) -> tuple[list[Scored], dict[str, float]]:
    """The baselines, every model and (with `ranker_dir`) the chat ranker on `tasks`; refuses (`TrainingLeak`) a model
    or ranker that learned from a query's conversation. Returns the results and the time-prior weight chosen per
    model (tuned on `dev_tasks`). The ranker's own model is scored too (under the name it has in `models`, else
    `chat_ranker_model`), so that the ranker is compared with the model alone on the same queries."""
    ranker = ChatRanker.load(ranker_dir) if ranker_dir else None
    if ranker is not None:
        models = {**models}
        text_model = _name_of(models, ranker.model_path) or "chat_ranker_model"
        models.setdefault(text_model, ranker.model_path)
        refuse_leaks({CHAT_RANKER: ranker_dir}, tasks)
    refuse_leaks(models, tasks)
    bm25 = {id(task): bm25_scores(task) for task in tasks}
    priors = {id(task): time_prior(task, time_scale_s) for task in [*tasks, *(dev_tasks or [])] if task.has_times()}
    results = score_baselines(tasks, bm25)
    weights = {}
    for name, path in models.items():
        model_results, weights[name] = score_model(
            name,
            path,
            tasks,
            cache,
            device=device,
            batch_size=batch_size,
            bm25=bm25,
            priors=priors,
            dev_tasks=dev_tasks,
        )
        results += model_results
        log(f"scored {name} ({path}) on {len(tasks)} tasks; time weight {weights[name]}")
    if ranker is not None:
        results += score_ranker(ranker, ranker_dir, text_model, tasks, cache, device, batch_size, bm25)
        log(f"scored {CHAT_RANKER} ({ranker_dir}, text signals of {text_model})")
    return results, weights


def _name_of(models: dict[str, str], path: str) -> str | None:
    """The name under which `models` holds the model at `path` (paths compared resolved), or None."""
    wanted = Path(path).resolve()
    return next((name for name, other in models.items() if Path(other).resolve() == wanted), None)


def score_ranker(
    ranker: ChatRanker,
    ranker_dir: str,
    text_model: str,
    tasks: list[Task],
    cache: EmbeddingCache,
    device: str,
    batch_size: int,
    bm25: dict[int, np.ndarray],
) -> list[Scored]:
    """The chat ranker on every task of a kind it ranks, reading the similarity of its own model; on the kinds its
    channel-history gate reads (`is_gated`), also without the gate (retriever `ungated`), to compare on the same
    queries."""
    model, key = load_model(ranker.model_path, device), model_key(ranker.model_path)
    provenance = read_provenance(ranker_dir)
    results = []
    for task in tasks:
        if not ranker.ranks(task_kind(task.name)):
            continue
        features = model_features(model, key, task, cache, batch_size, bm25[id(task)])
        setting = setting_of(provenance, task)
        ungated = ranker.scores(features)
        scores = {CHAT_RANKER: gated(task, ungated), **({UNGATED: ungated} if is_gated(task) else {})}
        results += [
            scored(CHAT_RANKER, name, None, task, values, setting=setting, text_model=text_model)
            for name, values in scores.items()
        ]
    return results


def score_rows(results: list[Scored], n_bootstrap: int = 1000) -> list[dict]:
    """Metric rows (value and bootstrap 95% interval) of every result."""
    return [
        {
            "model": r.model,
            "retriever": r.retriever,
            "task": r.task.name,
            "source": r.task.source,
            "dim": r.dim,
            "setting": r.setting,
            "metric": metric,
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "queries": len(r.task.queries),
        }
        for r in results
        for metric, (value, low, high) in summarize(r.ranks, n_bootstrap, clusters=query_clusters(r.task)).items()
    ]


def query_clusters(task: Task) -> np.ndarray:
    """What a task's queries were drawn by: `<source>/<channel>/<UTC day>` (the channel alone where a query's time
    is unknown; each query alone where its channel is). Intervals resample these clusters whole."""
    channels = task.query_channel or [None] * len(task.queries)
    times = task.query_ts or [None] * len(task.queries)
    return np.array(
        [
            f"{task.source}/q{i}"
            if channel is None
            else f"{task.source}/{channel}/{'' if ts is None else int(ts // 86400)}"
            for i, (channel, ts) in enumerate(zip(channels, times, strict=True))
        ]
    )


@dataclass
class Cell:
    """MRR@10 of one (model, retriever) on one task, over every source's queries, with its paired verdicts."""

    mrr: np.ndarray
    setting: str | None
    versus: dict[str, tuple[float, float, str]]  # baseline -> (delta, p-value, verdict)
    clusters: np.ndarray  # each query's channel-day (`query_clusters`)
    holm_p: dict[str, float]  # baseline -> p-value adjusted over every comparison of the table (Holm)

    def summary(self, n_bootstrap: int = 1000) -> tuple[float, float, float]:
        """MRR@10 and its 95% interval, resampling whole channel-days."""
        return bootstrap_interval(self.mrr, n_bootstrap, clusters=self.clusters)

    def survives_holm(self, label: str, alpha: float = 0.05) -> bool:
        """True when the verdict against `label` is a win or loss that holds over the whole table (Holm)."""
        return self.versus[label][2] != "tie" and self.holm_p[label] < alpha


VERSUS = ("bm25", "recency", "base", "dense", "time_aware", "hybrid")  # the last three: the ranker's own model


def comparison_table(results: list[Scored]) -> dict[tuple[str, str], dict[str, Cell]]:
    """(model, retriever) -> task -> Cell at full dimension, each compared on the same queries (paired randomization
    test) with BM25, recency and the base model's dense retrieval, and the chat ranker also with its own model's
    dense, time-aware and hybrid retrieval (the model alone and the hand-tuned combinations)."""
    grouped: dict[tuple[str, str], dict[str, list[Scored]]] = {}
    text_models = {}
    for r in results:
        if r.full_dim:
            grouped.setdefault((r.model, r.retriever), {}).setdefault(r.task.name, []).append(r)
            if r.text_model:
                text_models[(r.model, r.retriever)] = r.text_model
    table: dict[tuple[str, str], dict[str, Cell]] = {}
    for key, by_task in grouped.items():
        baselines = {"bm25": ("bm25", "bm25"), "recency": ("recency", "recency"), "base": (BASE_MODEL, "dense")}
        if key in text_models:
            baselines.update({name: (text_models[key], name) for name in ("dense", "time_aware", "hybrid")})
        for task, parts in by_task.items():
            mrr = np.concatenate([p.mrr() for p in parts])
            clusters = np.concatenate([query_clusters(p.task) for p in parts])
            versus = {}
            for label, baseline in baselines.items():
                other = grouped.get(baseline, {}).get(task)
                if baseline == key or other is None or len(other) != len(parts):
                    continue
                delta, p_value = paired_test(mrr, np.concatenate([p.mrr() for p in other]))
                versus[label] = (delta, p_value, verdict(delta, p_value))
            table.setdefault(key, {})[task] = Cell(mrr, parts[0].setting, versus, clusters, {})
    comparisons = [(cell, label) for by_task in table.values() for cell in by_task.values() for label in cell.versus]
    adjusted = holm([cell.versus[label][1] for cell, label in comparisons]) if comparisons else []
    for (cell, label), p_value in zip(comparisons, adjusted, strict=True):
        cell.holm_p[label] = float(p_value)
    return table


HEADLINE_RETRIEVERS = {"dense", "bm25", "recency", CHAT_RANKER}


def headline_scores(results: list[Scored]) -> dict[str, float]:
    """`mrr@10_<task>_<model>` over every source's queries at full dimension: each model's dense retrieval, BM25,
    recency and the chat ranker, as plain numbers for Dagster's plots."""
    return {
        f"mrr@10_{task}_{model}": round(float(cell.mrr.mean()), 4)
        for (model, retriever), by_task in comparison_table(results).items()
        if retriever in HEADLINE_RETRIEVERS
        for task, cell in by_task.items()
    }


_MARKS = {"win": " ▲", "loss": " ▼", "tie": ""}
SIGNIFICANCE_NOTE = (
    "▲ / ▼: better / worse than BM25 on the same queries, significant at 95% (paired randomization); † the verdict "
    "also holds after Holm's correction over every comparison of the table. Intervals: 95% bootstrap resampling "
    "whole channel-days, the units queries are drawn in."
)


def results_markdown(results: list[Scored]) -> str:
    """MRR@10 per model and retriever (full dimension) and task; ▲ / ▼ mark a win / loss against BM25 that is
    significant at 95% (paired randomization test on the same queries); a trained model's score on another
    platform's task says whether it is transfer."""
    table = comparison_table(results)
    tasks = sorted({task for by_task in table.values() for task in by_task})
    lines = [f"| model | retriever | {' | '.join(tasks)} |", "|---|---|" + "---|" * len(tasks)]
    for (model, retriever), by_task in table.items():
        values = []
        for task in tasks:
            cell = by_task.get(task)
            if cell is None:
                values.append("-")
                continue
            mark = _MARKS[cell.versus["bm25"][2]] if "bm25" in cell.versus else ""
            mark += "†" if "bm25" in cell.versus and cell.survives_holm("bm25") else ""
            setting = f" ({cell.setting})" if cell.setting else ""
            values.append(f"{cell.mrr.mean():.3f}{mark}{setting}")
        lines.append(f"| {model} | {retriever} | {' | '.join(values)} |")
    lines.append(f"\n{SIGNIFICANCE_NOTE}")
    return "\n".join(lines)


def verdict_rows(results: list[Scored], n_bootstrap: int = 1000) -> list[dict]:
    """One row per task, model and retriever at full dimension: MRR@10 with its interval (clustered by channel-day)
    and the paired verdicts against BM25 and the base model, each with its Holm-adjusted p-value over the table and
    whether it holds after that correction."""
    rows = []
    for (model, retriever), by_task in comparison_table(results).items():
        for task, cell in by_task.items():
            value, low, high = cell.summary(n_bootstrap)
            row = {
                "task": task,
                "model": model,
                "retriever": retriever,
                "setting": cell.setting,
                "queries": len(cell.mrr),
                "mrr@10": value,
                "ci_low": low,
                "ci_high": high,
            }
            for label, (delta, p_value, outcome) in cell.versus.items():
                row.update({f"vs_{label}_delta": delta, f"vs_{label}_p": p_value, f"vs_{label}": outcome})
                row.update({f"vs_{label}_holm_p": cell.holm_p[label], f"vs_{label}_holds": cell.survives_holm(label)})
            rows.append(row)
    return rows
