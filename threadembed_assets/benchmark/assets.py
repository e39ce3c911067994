"""Benchmark assets: tasks from the test split, and the scores of every model and baseline on them."""

import base64
import json
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from threadembed_assets import settings
from threadembed_assets.benchmark.retrievers import EmbeddingCache
from threadembed_assets.benchmark.score import headline, results_markdown, score_all
from threadembed_assets.benchmark.tasks import Task, TaskConfig, all_tasks
from threadembed_assets.summaries.assets import conversation_summaries
from threadembed_assets.training.assets import STAGES, hard_negative_model, retrieval_model, thread_model
from threadembed_assets.training.resources import ComputeResource, ModelStore
from threadembed_assets.warehouse.assets import connect, conversations, messages

SCORES_DDL = """
CREATE TABLE IF NOT EXISTS benchmark_scores (
    model VARCHAR, retriever VARCHAR, task VARCHAR, source VARCHAR, dim INTEGER, metric VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, queries INTEGER, run VARCHAR
)"""


def tasks_path() -> Path:
    return settings.data_dir() / "benchmark" / "tasks.json"


def load_tasks() -> dict[str, list[Task]]:
    """The tasks `benchmark_tasks` wrote, by split."""
    data = json.loads(tasks_path().read_text())
    return {split: [Task(**task) for task in tasks] for split, tasks in data.items()}


def training_conversations_in(con: duckdb.DuckDBPyConnection, tasks: list[Task]) -> int:
    """How many task queries come from a conversation outside the test split (must be 0)."""
    pairs = [(t.source, c) for t in tasks for c in (t.conversations or [])]
    con.execute("CREATE OR REPLACE TEMP TABLE task_conversations (source VARCHAR, conversation_id VARCHAR)")
    con.executemany("INSERT INTO task_conversations VALUES (?, ?)", pairs)
    return con.execute(
        "SELECT count(*) FROM task_conversations JOIN conversations USING (source, conversation_id) "
        "WHERE split != 'test'"
    ).fetchone()[0]


@dg.asset(group_name="benchmark", deps=[messages, conversations, conversation_summaries], kinds={"duckdb"})
def benchmark_tasks(context: dg.AssetExecutionContext, config: TaskConfig, warehouse: DuckDBResource):
    """Retrieval tasks from the test split of every source (never a conversation that fed training): thread
    retrieval, response retrieval (next message among the interleaved candidates, next window), summary-to-thread
    (per summarizer), and tasks 1-2 on the held-out platform. Dev-split tasks are kept for tuning."""
    with connect(warehouse) as con:
        by_split = {"test": all_tasks(con, ["test"], config), "dev": all_tasks(con, ["dev"], config)}
        leaked = training_conversations_in(con, by_split["test"])
    if leaked:
        raise dg.Failure(description=f"{leaked} benchmark queries come from non-test conversations")
    path = tasks_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({split: [t.to_dict() for t in tasks] for split, tasks in by_split.items()}))
    table = ["| task | source | queries | documents |", "|---|---|---|---|"]
    table += [f"| {t.name} | {t.source} | {len(t.queries)} | {len(t.docs)} |" for t in by_split["test"]]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "tasks": len(by_split["test"]),
            "queries": sum(len(t.queries) for t in by_split["test"]),
            "non_test_conversations": leaked,
            "test_tasks": dg.MetadataValue.md("\n".join(table)),
        }
    )


class BenchmarkConfig(dg.Config):
    """Run config of `benchmark_scores`."""

    time_scale_minutes: float = Field(default=60.0, description="Time-aware prior: exp(-gap / scale).")
    bootstrap: int = Field(default=1000, description="Bootstrap resamples for the 95% intervals.")
    extra_models: list[str] = Field(default=[], description="More sentence-transformers names or paths to score.")


def svg_bar_chart(rows: list[dict], task: str, metric: str = "mrr@10") -> str:
    """A small SVG bar chart of `metric` on `task` per model and retriever (full dimension)."""
    values = sorted(
        (
            (f"{model} {retriever}", by_task[task])
            for (model, retriever), by_task in headline(rows, metric).items()
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
    candidates = {"base": models.base_model_path()}
    candidates.update({stage: str(models.latest(stage)) for stage in STAGES if models.latest(stage)})
    candidates.update({name: name for name in config.extra_models})
    cache = EmbeddingCache(settings.data_dir() / "cache" / "embeddings.duckdb")
    try:
        rows, weights = score_all(
            tasks["test"],
            candidates,
            cache,
            device=compute.resolve_device(),
            batch_size=compute.eval_batch_size,
            dev_tasks=tasks["dev"],
            time_scale_s=config.time_scale_minutes * 60,
            n_bootstrap=config.bootstrap,
            log=context.log.info,
        )
        hits, misses = cache.hits, cache.misses
    finally:
        cache.close()
    with connect(warehouse) as con:
        con.execute(SCORES_DDL)
        con.execute("DELETE FROM benchmark_scores WHERE run = $run", {"run": context.run_id})
        con.executemany(
            "INSERT INTO benchmark_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    r["model"],
                    r["retriever"],
                    r["task"],
                    r["source"],
                    r["dim"],
                    r["metric"],
                    r["value"],
                    r["ci_low"],
                    r["ci_high"],
                    r["queries"],
                    context.run_id,
                ]
                for r in rows
            ],
        )
    table = results_markdown(rows)
    chart = base64.b64encode(svg_bar_chart(rows, "thread").encode()).decode()
    context.log.info("MRR@10 by model, retriever and task:\n" + table)
    return dg.MaterializeResult(
        metadata={
            "mrr@10": dg.MetadataValue.md(table),
            "thread_mrr_chart": dg.MetadataValue.md(f"![thread retrieval MRR@10](data:image/svg+xml;base64,{chart})"),
            "models": dg.MetadataValue.json(candidates),
            "time_weights": dg.MetadataValue.json(weights),
            "rows": len(rows),
            "embedding_cache_hits": hits,
            "embeddings_encoded": misses,
        }
    )


BENCHMARK_ASSETS = [benchmark_tasks, benchmark_scores]
