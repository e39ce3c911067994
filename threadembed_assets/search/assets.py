"""`conversation_index`: one source's conversations embedded with the published model, searchable on disk."""

import time
from datetime import UTC, datetime

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from threadembed_assets.benchmark.assets import chat_ranker
from threadembed_assets.search.index import ChatIndex
from threadembed_assets.search.store import save_index
from threadembed_assets.training.resources import ComputeResource, ModelStore
from threadembed_assets.warehouse.assets import connect, conversations, source_partitions


class IndexConfig(dg.Config):
    """Run config of `conversation_index`."""

    tune_messages: int = Field(default=200, description="Dev-split messages `is_new` is tuned on (half first ones).")
    recall_sample: int = Field(default=200, description="Conversations whose ANN results are checked against exact.")


@dg.asset(
    partitions_def=source_partitions,
    group_name="search",
    deps=[conversations, chat_ranker],
    kinds={"usearch", "bm25s"},
    # New messages (the imports sensor, the Discord refresh) refresh it; a never-trained ranker does not hold it back.
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(chat_ranker)),
)
def conversation_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """Every conversation of the source embedded with the model `chat_ranker` reads (else the best published stage,
    else the base model), in an approximate nearest-neighbour index (usearch, int8) beside float16 vectors and a
    BM25 index, with `is_new` tuned on the dev split; written to `<data dir>/index/<source>/` and switched in
    atomically. `ChatIndex.from_warehouse`, the CLI and the HTTP app read it."""
    source = context.partition_key
    started = time.perf_counter()
    with connect(warehouse) as con:
        index = ChatIndex.from_connection(
            con, source, models=models, device=compute.resolve_device(), ann=True, batch_size=compute.eval_batch_size
        )
    encoded = time.perf_counter() - started
    dev = [cid for cid, lines in index.lines.by_conversation.items() if lines[0].split == "dev"]
    threshold = index.tune_new_threshold(dev or None, max_messages=config.tune_messages)
    recall = index.vectors.recall(config.recall_sample)
    build, manifest = save_index(
        index,
        source,
        {
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "encode_seconds": round(encoded, 1),
            "ann_recall@10": recall,
            "bytes": index.vectors.nbytes(),
        },
    )
    context.log.info(
        f"conversation_index[{source}]: {len(index.docs)} conversations, {index.model}, {encoded:.0f} s to build; "
        f"ANN recall@10 {recall}; is_new {threshold}"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(index.docs),
            "dimension": manifest["dimension"],
            "model": index.model,
            "ranker": "chat_ranker" if index.ranker is not None else "none (fusion)",
            "build_seconds": round(time.perf_counter() - started, 1),
            "conversations_per_second": round(len(index.docs) / max(encoded, 1e-9), 1),
            "ann_recall@10": recall,
            "index_megabytes": round(sum(manifest["bytes"].values()) / 1e6, 2),
            "is_new_balanced_accuracy": threshold.get("balanced_accuracy"),
            "path": dg.MetadataValue.path(str(build)),
        }
    )


SEARCH_ASSETS = [conversation_index]
