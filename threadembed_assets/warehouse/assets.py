"""Warehouse assets: `messages` and `conversations`, one partition per source, in DuckDB."""

from functools import partial

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets.chat.linker import DISENTANGLER, load_published
from threadembed_assets.resources import ModelStore
from threadembed_assets.sources.assets import raw_messages
from threadembed_assets.sources.raw_cache import PART_GLOB, raw_cache_dir
from threadembed_assets.sources.registry import source_partitions
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.connection import WAREHOUSE_POOL, connect
from threadembed_assets.warehouse.conversations import build_conversations, conversation_preview
from threadembed_assets.warehouse.load import LoadOptions, load_messages
from threadembed_assets.warehouse.schema import table_schema


def _md_counts(counts: dict[str, int], label: str) -> dg.MetadataValue:
    rows = "\n".join(f"| {key} | {value} |" for key, value in counts.items()) or "| (none) | 0 |"
    return dg.MetadataValue.md(f"| {label} | rows |\n|---|---|\n{rows}")


def _column_schema(con, table: str) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in table_schema(con, table)])


@dg.asset(
    code_version=code_version("warehouse", "chat"),  # the published linker links messages
    partitions_def=source_partitions,
    group_name="warehouse",
    deps=[raw_messages],
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
)
def messages(
    context: dg.AssetExecutionContext, config: LoadOptions, warehouse: DuckDBResource, models: ModelStore
) -> dg.MaterializeResult:
    """Normalized messages of one source: conversations (gold or derived), positions and a stable split.

    Messages without gold ids or reply links are cut into conversations by the published `disentangler` (silence
    cuts where none is published, or where `derivation` says so); the metadata says which one this partition used.
    Unreadable or bad rows (no text, unparseable time, duplicate id, oversize) go to `quarantine` with a reason.
    The partition's rows in both tables are replaced in one transaction.
    """
    source = context.partition_key
    raw = raw_cache_dir(source)
    if not any(raw.glob(PART_GLOB)):
        raise dg.Failure(
            description=f"No raw cache for '{source}' at {raw}: materialize raw_messages for partition {source} first."
        )
    folder = models.latest(DISENTANGLER) if config.derivation == "disentangler" else None
    with connect(warehouse) as con:
        counts = load_messages(con, source, raw, config, partial(load_published, folder) if folder else None)
        schema = _column_schema(con, "messages")
    if not {"time_gap", "disentangled"} & set(counts["conversations_by_method"]):
        derivation = "none needed (gold ids or reply links throughout)"
    elif folder:
        derivation = f"disentangler {folder.name}"
    else:
        reason = " (no published disentangler)" if config.derivation == "disentangler" else ""
        derivation = f"silence cuts of {config.gap_minutes:g} min{reason}"
    context.log.info(
        f"messages[{source}]: {counts['messages']} messages, {counts['conversations']} conversations, "
        f"{counts['quarantined']} quarantined {counts['quarantine_by_reason']}; derived conversations: {derivation}"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": counts["messages"],
            "conversations": counts["conversations"],
            "quarantined": counts["quarantined"],
            "quarantine_by_reason": _md_counts(counts["quarantine_by_reason"], "reason"),
            "conversations_by_method": _md_counts(counts["conversations_by_method"], "method"),
            "conversation_derivation": derivation,
            "dagster/column_schema": schema,
        }
    )


@dg.asset(
    code_version=code_version("warehouse", "chat"),  # the published linker links messages
    partitions_def=source_partitions,
    group_name="warehouse",
    deps=[messages],
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
)
def conversations(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
    """One row per conversation of a source: counts, participants, time span, method and split."""
    source = context.partition_key
    with connect(warehouse) as con:
        stats = build_conversations(con, source)
        preview = conversation_preview(con, source)
        schema = _column_schema(con, "conversations")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats["conversations"],
            "with_3_plus_messages": stats["with_3_plus"],
            "median_messages": stats["median_messages"],
            "by_split": _md_counts(stats["by_split"], "split"),
            "preview": dg.MetadataValue.md(preview),
            "dagster/column_schema": schema,
        }
    )
