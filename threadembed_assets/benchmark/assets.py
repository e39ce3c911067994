"""Benchmark assets: tasks from the test split, and the scores of every model and baseline on them."""

import base64
import json
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from pydantic import Field

from threadembed_assets import settings
from threadembed_assets.benchmark.score import (
    BASE_MODEL,
    VERSUS,
    Scored,
    TrainingLeak,
    comparison_table,
    headline_scores,
    refuse_leaks,
    results_markdown,
    score_all,
    score_rows,
    verdict_rows,
)
from threadembed_assets.chat.features import FEATURES
from threadembed_assets.chat.ranker import CHAT_RANKER, LEARNERS, RANKED_KINDS, ChatRanker, fit_ranker, model_features
from threadembed_assets.chat.retrievers import EmbeddingCache, default_cache_path, model_key
from threadembed_assets.chat.task import Task, task_kind
from threadembed_assets.evaluation.tasks import TaskConfig, all_tasks, split_by_conversation
from threadembed_assets.resources import ComputeResource, ModelStore
from threadembed_assets.summaries.assets import conversation_summaries
from threadembed_assets.training.assets import STAGES, hard_negative_model, ranker_model, retrieval_model, thread_model
from threadembed_assets.training.train import load_model
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.assets import conversations, messages
from threadembed_assets.warehouse.connection import connect
from threadembed_assets.warehouse.provenance import read_provenance, train_conversations, write_provenance
from threadembed_assets.warehouse.schema import transaction

# The ranker, retrievers, metrics and tasks these assets run live in chat/ and evaluation/: their code counts too.
CODE_VERSION = code_version("benchmark", "chat", "evaluation")
SCORES_COLUMNS = {
    "model": "VARCHAR",
    "retriever": "VARCHAR",
    "task": "VARCHAR",
    "source": "VARCHAR",
    "dim": "INTEGER",
    "setting": "VARCHAR",
    "metric": "VARCHAR",
    "value": "DOUBLE",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    "queries": "INTEGER",
}
VERDICT_COLUMNS = {
    "task": "VARCHAR",
    "model": "VARCHAR",
    "retriever": "VARCHAR",
    "setting": "VARCHAR",
    "queries": "INTEGER",
    "mrr@10": "DOUBLE",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    **{
        f"vs_{b}{part}": kind
        for b in VERSUS
        for part, kind in [
            ("_delta", "DOUBLE"),
            ("_p", "DOUBLE"),
            ("", "VARCHAR"),
            ("_holm_p", "DOUBLE"),
            ("_holds", "BOOLEAN"),
        ]
    },
}


def replace_run_rows(
    con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], rows: list[dict], run: str
) -> None:
    """Write `rows` as `run`'s rows of `table` (created, or given the columns it lacks, first)."""
    ddl = ", ".join(f'"{name}" {kind}' for name, kind in {**columns, "run": "VARCHAR"}.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl})")
    for name, kind in columns.items():
        con.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{name}" {kind}')
    frame = pa.Table.from_pylist(
        [{**{name: row.get(name) for name in columns}, "run": run} for row in rows],
        schema=pa.schema([(name, _ARROW[kind]) for name, kind in {**columns, "run": "VARCHAR"}.items()]),
    )
    names = ", ".join(f'"{name}"' for name in [*columns, "run"])
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE run = $run", {"run": run})
        con.register("new_rows", frame)
        con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM new_rows")
        con.unregister("new_rows")


_ARROW = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}


def tasks_path() -> Path:
    return settings.data_dir() / "benchmark" / "tasks.json"


def load_tasks() -> dict[str, list[Task]]:
    """The tasks `benchmark_tasks` wrote, by split."""
    data = json.loads(tasks_path().read_text())
    return {split: [Task(**task) for task in tasks] for split, tasks in data.items()}


def published_models(models: ModelStore, with_ranker: bool = False) -> dict[str, str]:
    """The base model and every training stage's `latest` (and `chat_ranker`'s, when asked and published)."""
    found = {BASE_MODEL: models.base_model_path()}
    found.update({stage: str(latest) for stage in STAGES if (latest := models.latest(stage))})
    if with_ranker and (ranker := models.latest(CHAT_RANKER)):
        found[CHAT_RANKER] = str(ranker)
    return found


class RankerConfig(TaskConfig):
    """Run config of `chat_ranker`: how its train- and dev-split tasks are cut (as the benchmark's) and which
    learners it tries."""

    max_queries: int = Field(default=600, description="Queries per task, source and split to fit and choose on.")
    held_out_platform: str = Field(
        default="",
        description="Empty: the ranker fits on every platform's tasks, and `<task>@<platform>` tasks would only "
        "repeat their queries.",
    )
    fit_split: str = Field(
        default="train",
        description="Split whose queries the ranker learns from. `train`: the train split fits and dev chooses (the "
        "model's similarities on its own training conversations run higher than on new chat). `dev`: conversations "
        "no stage trained on, so the similarities are what they will be on new chat; a `fit_share` of them fit, the "
        "rest choose. On ubuntu_irc's cpu preset `dev` fits 56 queries a task against 300 and loses thread "
        "retrieval on test queries (bench/ranker_fit.py), so `train` stays the default until dev is larger.",
    )
    fit_share: float = Field(default=0.5, description="`fit_split: dev`: share of dev conversations that fit.")
    learners: list[str] = Field(default=list(LEARNERS), description="Learners to fit per task; the best on dev wins.")
    min_platform_queries: int = Field(
        default=100,
        description="A platform with this many train queries of a task (in a train split of several platforms) also "
        "gets learners of its own, kept where they beat the shared learner on its dev queries.",
    )


def _ranker_metadata(ranker: ChatRanker, folder: Path, record: dict) -> dict:
    weights = [
        dg.TableRecord(
            {
                "task": kind,
                "feature": name,
                "weight": (card["weights"] or {}).get(name),
                "dev_mrr_lost_when_shuffled": card["importance"].get(name),
            }
        )
        for kind, card in ranker.card.items()
        for name in [*FEATURES, *[n for n in (card["weights"] or {}) if n not in FEATURES]]
    ]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("task", "string"),
            dg.TableColumn("feature", "string"),
            dg.TableColumn("weight", "float", description="logistic weight per standardised feature"),
            dg.TableColumn("dev_mrr_lost_when_shuffled", "float", description="permutation importance"),
        ]
    )
    chart = base64.b64encode(importance_chart(ranker).encode()).decode()
    return {
        "path": dg.MetadataValue.path(str(folder)),
        "text_model": dg.MetadataValue.path(ranker.model_path),
        "learners": dg.MetadataValue.json({kind: card["learner"] for kind, card in ranker.card.items()}),
        "weights": dg.MetadataValue.table(records=weights, schema=schema),
        "importance_chart": dg.MetadataValue.md(f"![permutation importance](data:image/svg+xml;base64,{chart})"),
        "card": dg.MetadataValue.json(ranker.card),
        "trained_on_sources": dg.MetadataValue.json(record["sources"]),
        "train_conversations": record["conversations"],
        **{f"dev_mrr@10_{kind}": card["dev_mrr@10"][card["learner"]] or 0.0 for kind, card in ranker.card.items()},
    }


def importance_chart(ranker: ChatRanker) -> str:
    """An SVG bar chart per task of the dev MRR@10 each feature is worth (permutation importance)."""
    rows = [
        (f"{kind} {name}", value) for kind, card in ranker.card.items() for name, value in card["importance"].items()
    ]
    return svg_bars(rows, scale=max([abs(v) for _, v in rows] + [1e-9]), number="+.4f")


def svg_bars(rows: list[tuple[str, float]], scale: float = 1.0, number: str = ".3f") -> str:
    """A small SVG chart: one labelled bar per row, as long as its value over `scale` (negative values: none)."""
    bars = "".join(
        f'<text x="0" y="{18 * i + 13}" font-size="11">{label}</text>'
        f'<rect x="260" y="{18 * i + 3}" width="{300 * max(value, 0) / scale:.1f}" height="13" fill="#4f43dd"/>'
        f'<text x="{265 + 300 * max(value, 0) / scale:.1f}" y="{18 * i + 13}" font-size="11">{value:{number}}</text>'
        for i, (label, value) in enumerate(rows)
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="{18 * len(rows) + 8}">{bars}</svg>'


@dg.asset(
    code_version=CODE_VERSION,
    group_name="training",
    deps=[messages, conversations, thread_model, retrieval_model, hard_negative_model],
    kinds={"scikitlearn"},
    pool="gpu",
)
def chat_ranker(
    context: dg.AssetExecutionContext,
    config: RankerConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """A learned combination of the latest model's similarity, BM25 and the chat signals (time gap, active span,
    authors, mentions, reply links, size) per task: fitted on thread and response tasks built like the benchmark's
    (train-split ones, or with `fit_split: dev` half the dev conversations, which no stage trained on), the learner
    (logistic regression or boosted trees) chosen on dev conversations it did not fit on, and published as
    `models/chat_ranker/latest` with its feature list, weights and scores on those conversations."""
    if config.fit_split not in ("dev", "train"):
        raise dg.Failure(description=f"chat_ranker: fit_split is `dev` or `train`, not {config.fit_split!r}")
    model_path = ranker_model(models)
    with connect(warehouse, read_only=True) as con:
        if config.fit_split == "dev":
            halves = [split_by_conversation(t, config.fit_share) for t in all_tasks(con, ["dev"], config)]
            splits = {"train": [fit for fit, _ in halves], "dev": [choose for _, choose in halves]}
        else:
            splits = {split: all_tasks(con, [split], config) for split in (config.fit_split, "dev")}
        learned = train_conversations(con, sorted({t.source for t in splits["train"]}))
    by_split = {
        split: [t for t in tasks if task_kind(t.name) in RANKED_KINDS and t.queries] for split, tasks in splits.items()
    }
    if not by_split["train"]:
        raise dg.Failure(
            description=f"chat_ranker: no {config.fit_split}-split thread or response tasks (conversations of 3+)"
        )
    model, key = load_model(model_path, compute.resolve_device()), model_key(model_path)
    cache = EmbeddingCache(default_cache_path())
    features: dict[str, list] = {split: [] for split in by_split}
    try:
        for split, tasks in by_split.items():
            for t in tasks:
                features[split].append(model_features(model, key, t, cache, compute.eval_batch_size))
                context.log.info(f"chat_ranker: {split} {t.name} of {t.source}: {len(features[split][-1].qi)} pairs")
    finally:
        cache.close()
    try:
        ranker = fit_ranker(
            model_path,
            features["train"],
            features["dev"],
            learners=tuple(config.learners),
            seed=config.seed,
            min_platform_queries=config.min_platform_queries,
            log=context.log.info,
        )
    except ValueError as exc:
        raise dg.Failure(description=f"chat_ranker: {exc}") from None
    folder = models.asset_dir(CHAT_RANKER) / context.run_id
    ranker.save(folder)
    record = write_provenance(folder, learned, [], read_provenance(model_path))
    models.publish(CHAT_RANKER, folder)
    fitted_on = {
        "fit_split": config.fit_split,
        "fit_queries": sum(len(t.queries) for t in by_split["train"]),
        "choice_queries": sum(len(t.queries) for t in by_split["dev"]),
    }
    return dg.MaterializeResult(metadata={**_ranker_metadata(ranker, folder, record), **fitted_on})


@dg.asset(
    code_version=CODE_VERSION,
    group_name="benchmark",
    deps=[
        messages,
        conversations,
        conversation_summaries,
        thread_model,
        retrieval_model,
        hard_negative_model,
        chat_ranker,
    ],
    kinds={"duckdb"},
)
def benchmark_tasks(
    context: dg.AssetExecutionContext, config: TaskConfig, warehouse: DuckDBResource, models: ModelStore
) -> dg.MaterializeResult:
    """Retrieval tasks whose queries come from the test split of every source: thread retrieval, response retrieval
    (next message and next window among the channel's next messages), summary-to-thread (per summarizer), and tasks
    1-2 on the held-out platform; candidates are every conversation and message of the query's channel and time,
    whatever their split. Dev-split tasks are kept for tuning. Refuses when a published model learned from a
    conversation that gives a test query."""
    with connect(warehouse, read_only=True) as con:
        by_split = {"test": all_tasks(con, ["test"], config), "dev": all_tasks(con, ["dev"], config)}
    try:
        refuse_leaks(published_models(models, with_ranker=True), by_split["test"])
    except TrainingLeak as exc:
        raise dg.Failure(description=str(exc)) from None
    path = tasks_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({split: [t.to_dict() for t in tasks] for split, tasks in by_split.items()}))
    table = ["| task | source | queries | documents | candidates per query |", "|---|---|---|---|---|"]
    table += [
        f"| {t.name} | {t.source} | {len(t.queries)} | {len(t.docs)} | "
        f"{np.mean([len(c) for c in t.candidates]) if t.candidates else len(t.docs):.1f} |"
        for t in by_split["test"]
    ]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "tasks": len(by_split["test"]),
            "queries": sum(len(t.queries) for t in by_split["test"]),
            "test_tasks": dg.MetadataValue.md("\n".join(table)),
        }
    )


class BenchmarkConfig(dg.Config):
    """Run config of `benchmark_scores`."""

    time_scale_minutes: float = Field(default=60.0, description="Time-aware prior: exp(-gap / scale).")
    bootstrap: int = Field(default=1000, description="Bootstrap resamples for the 95% intervals.")
    extra_models: list[str] = Field(default=[], description="More sentence-transformers names or paths to score.")


def svg_bar_chart(results: list[Scored], task: str) -> str:
    """A small SVG bar chart of MRR@10 on `task` per model and retriever (full dimension)."""
    values = sorted(
        (
            (f"{model} {retriever}", float(by_task[task].mrr.mean()))
            for (model, retriever), by_task in comparison_table(results).items()
            if task in by_task
        ),
        key=lambda item: -item[1],
    )
    return svg_bars(values)


@dg.asset(
    code_version=CODE_VERSION,
    group_name="benchmark",
    deps=[benchmark_tasks, thread_model, retrieval_model, hard_negative_model, chat_ranker],
    kinds={"duckdb", "pytorch"},
    pool="gpu",
)
def benchmark_scores(
    context: dg.AssetExecutionContext,
    config: BenchmarkConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """MRR@10, Recall@1/5/10 and NDCG@10 with bootstrap 95% intervals of the base model, every training stage
    (dense at every Matryoshka dimension, hybrid with BM25 by reciprocal rank fusion, time-aware with its weight
    tuned on dev) and BM25, per task and source. Corpus embeddings are cached per (model, text hash)."""
    tasks = load_tasks()
    candidates = {**published_models(models), **{name: name for name in config.extra_models}}
    cache = EmbeddingCache(default_cache_path())
    try:
        results, weights = score_all(
            tasks["test"],
            candidates,
            cache,
            device=compute.resolve_device(),
            batch_size=compute.eval_batch_size,
            dev_tasks=tasks["dev"],
            time_scale_s=config.time_scale_minutes * 60,
            ranker_dir=str(ranker) if (ranker := models.latest(CHAT_RANKER)) else None,
            log=context.log.info,
        )
        hits, misses = cache.hits, cache.misses
    except TrainingLeak as exc:
        raise dg.Failure(description=str(exc)) from None
    finally:
        cache.close()
    rows = score_rows(results, config.bootstrap)
    verdicts = verdict_rows(results, config.bootstrap)
    with connect(warehouse) as con:
        replace_run_rows(con, "benchmark_scores", SCORES_COLUMNS, rows, context.run_id)
        replace_run_rows(con, "benchmark_verdicts", VERDICT_COLUMNS, verdicts, context.run_id)
    table = results_markdown(results)
    chart = base64.b64encode(svg_bar_chart(results, "thread").encode()).decode()
    context.log.info("MRR@10 by model, retriever and task:\n" + table)
    return dg.MaterializeResult(
        metadata={
            "mrr@10": dg.MetadataValue.md(table),
            "thread_mrr_chart": dg.MetadataValue.md(f"![thread retrieval MRR@10](data:image/svg+xml;base64,{chart})"),
            "models": dg.MetadataValue.json(candidates),
            "time_weights": dg.MetadataValue.json(weights),
            "rows": len(rows),
            "significant_wins_over_bm25": sum(v.get("vs_bm25") == "win" for v in verdicts),
            "significant_losses_to_bm25": sum(v.get("vs_bm25") == "loss" for v in verdicts),
            "embedding_cache_hits": hits,
            "embeddings_encoded": misses,
            **headline_scores(results),  # numbers, so the UI's plots show each trend across materializations
        }
    )


BENCHMARK_ASSETS = [chat_ranker, benchmark_tasks, benchmark_scores]
