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
from threadembed_assets.benchmark.retrievers import EmbeddingCache
from threadembed_assets.benchmark.score import (
    BASE_MODEL,
    Scored,
    TrainingLeak,
    comparison_table,
    refuse_leaks,
    results_markdown,
    score_all,
    score_rows,
    verdict_rows,
)
from threadembed_assets.benchmark.tasks import Task, TaskConfig, all_tasks
from threadembed_assets.summaries.assets import conversation_summaries
from threadembed_assets.training.assets import STAGES, hard_negative_model, retrieval_model, thread_model
from threadembed_assets.training.resources import ComputeResource, ModelStore
from threadembed_assets.warehouse.assets import connect, conversations, messages
from threadembed_assets.warehouse.schema import transaction

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
        for b in ("bm25", "base")
        for part, kind in [("_delta", "DOUBLE"), ("_p", "DOUBLE"), ("", "VARCHAR")]
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


_ARROW = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64()}


def tasks_path() -> Path:
    return settings.data_dir() / "benchmark" / "tasks.json"


def load_tasks() -> dict[str, list[Task]]:
    """The tasks `benchmark_tasks` wrote, by split."""
    data = json.loads(tasks_path().read_text())
    return {split: [Task(**task) for task in tasks] for split, tasks in data.items()}


def published_models(models: ModelStore) -> dict[str, str]:
    """The base model and every training stage's `latest`."""
    found = {BASE_MODEL: models.base_model_path()}
    found.update({stage: str(latest) for stage in STAGES if (latest := models.latest(stage))})
    return found


@dg.asset(
    group_name="benchmark",
    deps=[messages, conversations, conversation_summaries, thread_model, retrieval_model, hard_negative_model],
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
    with connect(warehouse) as con:
        by_split = {"test": all_tasks(con, ["test"], config), "dev": all_tasks(con, ["dev"], config)}
    try:
        refuse_leaks(published_models(models), by_split["test"])
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
    bars = "".join(
        f'<text x="0" y="{20 * i + 14}" font-size="11">{label}</text>'
        f'<rect x="230" y="{20 * i + 3}" width="{300 * value:.1f}" height="14" fill="#4f43dd"/>'
        f'<text x="{235 + 300 * value:.1f}" y="{20 * i + 14}" font-size="11">{value:.3f}</text>'
        for i, (label, value) in enumerate(values)
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="{20 * len(values) + 10}">{bars}</svg>'


@dg.asset(
    group_name="benchmark",
    deps=[benchmark_tasks, thread_model, retrieval_model, hard_negative_model],
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
    cache = EmbeddingCache(settings.data_dir() / "cache" / "embeddings.duckdb")
    try:
        results, weights = score_all(
            tasks["test"],
            candidates,
            cache,
            device=compute.resolve_device(),
            batch_size=compute.eval_batch_size,
            dev_tasks=tasks["dev"],
            time_scale_s=config.time_scale_minutes * 60,
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
        }
    )


BENCHMARK_ASSETS = [benchmark_tasks, benchmark_scores]
