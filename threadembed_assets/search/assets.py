"""Search assets: `onnx_model`, the published model as int8 ONNX for CPU serving, and `conversation_index`, one
source's conversations embedded with the published model, searchable on disk."""

import json
import time
from datetime import UTC, datetime

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from threadembed_assets.benchmark.assets import chat_ranker
from threadembed_assets.chat.encoders import CONFIG_FILE, FLOAT_FILE, INT8_FILE, ONNX_MODEL, OnnxEncoder
from threadembed_assets.chat.retrievers import model_key, shared_embeddings
from threadembed_assets.chat.task import task_kind
from threadembed_assets.evaluation.tasks import TaskConfig, all_tasks
from threadembed_assets.resources import ComputeResource, ModelStore
from threadembed_assets.search.index import ChatIndex
from threadembed_assets.search.onnx import compare_encoders, export_onnx
from threadembed_assets.search.store import save_index
from threadembed_assets.sources.registry import source_partitions
from threadembed_assets.training.assets import ranker_model
from threadembed_assets.training.train import load_model
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.assets import conversations
from threadembed_assets.warehouse.connection import connect


class IndexConfig(dg.Config):
    """Run config of `conversation_index`."""

    tune_messages: int = Field(
        default=200,
        description="Dev-split messages `is_new` is tuned on (half first ones); as many test-split messages "
        "measure it.",
    )
    recall_sample: int = Field(
        default=200, description="Test-split messages asked of the ANN index, its results checked against exact."
    )


class OnnxConfig(TaskConfig):
    """Run config of `onnx_model`: the dev tasks (cut as the benchmark's) the int8 export is measured on."""

    max_queries: int = Field(default=300, description="Dev queries per task and source.")
    held_out_platform: str = Field(default="", description="Empty: every platform's dev tasks together.")
    tolerance: float = Field(
        default=0.01, description="The export serves when its dev MRR@10 is at most this far below PyTorch's."
    )


SEARCH_CODE = code_version("search", "chat", "evaluation", "benchmark")  # search reads the ranker, tasks, retrievers


@dg.asset(code_version=SEARCH_CODE, group_name="search", deps=[chat_ranker], kinds={"onnx"})
def onnx_model(
    context: dg.AssetExecutionContext,
    config: OnnxConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """The model search reads (the one `chat_ranker` reads, else the best published stage) exported to ONNX with
    int8 weights for CPU serving, measured against its PyTorch self on dev-split thread and next-message retrieval
    (same queries, paired) and for encoding speed on the same texts. Published as `models/onnx_model/latest`, which
    `ChatIndex` then encodes with on CPU, only when its dev MRR@10 is within `tolerance` of PyTorch's on every
    task."""
    model_path = ranker_model(models)
    folder = models.asset_dir(ONNX_MODEL) / context.run_id
    reference = load_model(model_path, "cpu")
    exported = export_onnx(reference, model_path, folder)
    with connect(warehouse, read_only=True) as con:
        tasks = [
            t
            for t in all_tasks(con, ["dev"], config)
            if task_kind(t.name) in ("thread", "response_message") and t.queries
        ]
    if not tasks:
        raise dg.Failure(description="onnx_model: no dev-split thread or next-message queries to measure it on")
    with shared_embeddings() as cache:  # chat_ranker encoded the messages of these tasks with this model
        comparison = compare_encoders(
            reference,
            OnnxEncoder(folder),
            tasks,
            compute.eval_batch_size,
            cache=cache,
            reference_key=model_key(model_path),
        )
    worst = min(row["mrr@10_candidate"] - row["mrr@10_reference"] for row in comparison["tasks"].values())
    serves = worst >= -config.tolerance
    exported.update(dev=comparison, serves=serves, tolerance=config.tolerance)
    (folder / CONFIG_FILE).write_text(json.dumps(exported, indent=1))
    if serves:
        models.publish(ONNX_MODEL, folder)
    context.log.info(
        f"onnx_model: int8 export of {model_path} encodes {comparison['speedup']}x PyTorch's speed; worst dev MRR@10 "
        f"change {worst:+.4f} -> {'published' if serves else 'not published (PyTorch keeps serving)'}"
    )
    rows = [dg.TableRecord({"task": name, **row}) for name, row in comparison["tasks"].items()]
    metadata = {
        "source_model": model_path,
        "published": serves,
        "speedup_vs_pytorch": comparison["speedup"],
        "pytorch_texts_per_second": comparison["texts_per_second_reference"],
        "int8_texts_per_second": comparison["texts_per_second_candidate"],
        "int8_megabytes": round((folder / INT8_FILE).stat().st_size / 1e6, 1),
        "float32_megabytes": round((folder / FLOAT_FILE).stat().st_size / 1e6, 1),
        "dev": dg.MetadataValue.table(rows),
        "path": dg.MetadataValue.path(str(folder)),
    }
    for name, row in comparison["tasks"].items():
        metadata[f"dev_mrr@10_{name}_pytorch"] = row["mrr@10_reference"]
        metadata[f"dev_mrr@10_{name}_int8"] = row["mrr@10_candidate"]
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    code_version=SEARCH_CODE,
    partitions_def=source_partitions,
    group_name="search",
    deps=[conversations, chat_ranker, onnx_model],
    kinds={"usearch", "bm25s"},
    # New messages (the imports sensor, the Discord refresh) refresh it; a never-trained ranker does not hold it back.
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(chat_ranker, onnx_model)),
)
def conversation_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> dg.MaterializeResult:
    """Every conversation of the source embedded with the model `chat_ranker` reads (else the best published stage,
    else the base model; on CPU its `onnx_model` int8 export where one is published), in an approximate
    nearest-neighbour index (usearch, int8) beside float16 vectors and a BM25 index, with `is_new` tuned on the dev
    split; written to `<data dir>/index/<source>/` and switched in atomically. `ChatIndex.from_warehouse`, the CLI
    and the HTTP app read it."""
    source = context.partition_key
    started = time.perf_counter()
    with connect(warehouse, read_only=True) as con:
        lines = ChatIndex.read_lines(con, source)
    # The run's cache holds the messages onnx_model's dev check encoded; what the build encodes is kept in it, and
    # tuning and measuring `is_new` read it.
    with shared_embeddings() as cache:
        index = ChatIndex.from_lines(
            lines,
            models=models,
            device=compute.resolve_device(),
            ann=True,
            batch_size=compute.eval_batch_size,
            encoded=cache,
        )
        encoded = time.perf_counter() - started
        dev = index.conversations_of_split("dev") or None
        threshold = index.tune_new_threshold(dev, max_messages=config.tune_messages)
        # Measured on what they were not made from: test-split messages, never tuned on, never queries in the index.
        held_out = index.conversations_of_split("test") or index.conversation_ids
        is_new = index.new_accuracy(held_out, max_messages=config.tune_messages)
        recall = index.ann_recall(held_out, config.recall_sample)
    build, manifest = save_index(
        index,
        source,
        {
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "encode_seconds": round(encoded, 1),
            "ann_recall@10": recall,
            "is_new_held_out": is_new,
            "bytes": index.vectors.nbytes(),
        },
    )
    context.log.info(
        f"conversation_index[{source}]: {len(index.docs)} conversations, {index.model}, {encoded:.0f} s to build; "
        f"ANN recall@10 {recall} (held-out messages as queries); is_new tuned {threshold}, on test messages {is_new}"
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
            "is_new_balanced_accuracy": (is_new or {}).get("balanced_accuracy"),
            "is_new_balanced_accuracy_tuning": threshold.get("balanced_accuracy"),
            "path": dg.MetadataValue.path(str(build)),
        }
    )


SEARCH_ASSETS = [onnx_model, conversation_index]
