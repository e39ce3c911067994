"""`conversation_summaries`: searchable descriptions of conversations, from an LLM or, offline, extractive."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets.sources.registry import source_partitions
from threadembed_assets.summaries.client import LLMResource
from threadembed_assets.summaries.extractive import EXTRACTIVE_MODEL, EXTRACTIVE_VERSION
from threadembed_assets.summaries.prompt import PROMPT_VERSION
from threadembed_assets.summaries.summarize import (
    SummaryConfig,
    cached_summaries,
    ensure_summary_tables,
    estimated_cost,
    extractive_for,
    select_conversations,
    summarize_with_llm,
    write_summaries,
)
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.assets import conversations, messages
from threadembed_assets.warehouse.connection import WAREHOUSE_POOL, connect


def _samples_markdown(con, source: str, limit: int = 5) -> str:
    rows = con.execute(
        "SELECT conversation_id, split, summary FROM conversation_summaries WHERE source = $source "
        "ORDER BY hash(conversation_id) LIMIT $limit",
        {"source": source, "limit": limit},
    ).fetchall()
    lines = ["| conversation | split | summary |", "|---|---|---|"]
    lines += [f"| {cid} | {split} | {text.replace('|', '/')[:200]} |" for cid, split, text in rows]
    return "\n".join(lines)


@dg.asset(
    code_version=code_version("summaries"),
    partitions_def=source_partitions,
    group_name="summaries",
    deps=[messages, conversations],
    kinds={"duckdb", "openai"},
    pool=WAREHOUSE_POOL,
)
def conversation_summaries(
    context: dg.AssetExecutionContext, config: SummaryConfig, warehouse: DuckDBResource, llm: LLMResource
) -> dg.MaterializeResult:
    """One or two sentences per conversation, written the way someone searching for it would phrase them.

    With an `llm` endpoint configured, summaries come from the model (cached by content, model and prompt
    version; written as they arrive). Without one, an extractive summarizer (opening question + distinctive
    terms) fills the table, labelled `summarizer='extractive'` in every row and in this metadata.
    """
    source = context.partition_key
    with connect(warehouse) as con:
        ensure_summary_tables(con)
        picked = select_conversations(con, source, config)
    if llm.configured:
        summarizer, model, version = "llm", llm.model, PROMPT_VERSION
        stats = summarize_with_llm(lambda: connect(warehouse), source, picked, llm, log=context.log.info)
    else:
        summarizer, model, version = "extractive", EXTRACTIVE_MODEL, EXTRACTIVE_VERSION
        stats = None
    with connect(warehouse) as con:
        summaries = cached_summaries(con, model) if stats is not None else extractive_for(picked)
        rows = write_summaries(con, source, picked, summarizer, model, version, summaries)
        samples = _samples_markdown(con, source)
    metadata = {
        "summarizer": summarizer,
        "model": model,
        "prompt_version": version,
        "requested": len(picked),
        "dagster/row_count": rows,
        "samples": dg.MetadataValue.md(samples),
    }
    if stats is not None:
        cost = estimated_cost(stats, model, config)
        metadata.update(
            cache_hits=stats.cache_hits,
            calls=stats.calls,
            failures=sum(stats.failures.values()),
            failures_by_kind=dg.MetadataValue.json(dict(stats.failures)),
            failure_examples=dg.MetadataValue.json(stats.failure_examples),
            tokens_in=stats.tokens_in,
            tokens_out=stats.tokens_out,
            estimated_cost_usd=cost if cost is not None else "no price configured for this model",
        )
        context.log.info(
            f"conversation_summaries[{source}]: {rows}/{len(picked)} summarized, {stats.cache_hits} cached, "
            f"{stats.calls} calls, failures {dict(stats.failures)}"
        )
    return dg.MaterializeResult(metadata=metadata)
