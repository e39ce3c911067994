"""Pair table assets, one per strategy, partitioned by source like the warehouse."""

import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from threadembed_assets.pairs.build import STRATEGIES, PairConfig, build_pairs
from threadembed_assets.pairs.quality import pair_metrics
from threadembed_assets.sources.registry import source_partitions
from threadembed_assets.summaries.assets import conversation_summaries
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.assets import conversations, messages
from threadembed_assets.warehouse.connection import WAREHOUSE_POOL, connect

_DESCRIPTIONS = {
    "A": "Strategy A: a message and the window of its own conversation around it (the thread it belongs to).",
    "B": "Strategy B: a question-like message and its answer (replies, else the next messages by others).",
    "C": "Strategy C: consecutive windows of one conversation.",
    "D": "Strategy D: a conversation's summary (LLM or extractive, labelled in `meta`) and the conversation.",
}
_NEGATIVES = (
    " Each row carries, where one exists, a negative from the interleaved thread: another conversation of the "
    "same channel and split, close in time. Rows keep their conversation's split; training reads `train` rows."
)


_LABELS = ("anchor", "positive", "negative")


def pairs_preview(con, table: str, source: str, limit: int = 3) -> str:
    """Markdown of a few train pairs of a table."""
    rows = con.execute(
        f"SELECT anchor, positive, negative FROM {table} WHERE source = $source AND split = 'train' "
        "ORDER BY hash(anchor) LIMIT $limit",
        {"source": source, "limit": limit},
    ).fetchall()
    blocks = [
        "\n".join(f"**{label}**\n```\n{(text or '-')[:400]}\n```" for label, text in zip(_LABELS, row, strict=True))
        for row in rows
    ]
    return "\n\n---\n\n".join(blocks) or "(no train pairs)"


def quality_metadata(con, table: str, source: str, config: dg.Config) -> dict:
    """Materialization metadata of a pair table: counts, the quality metrics (also as JSON for checks), the config
    that built it (checks compare only like with like), preview."""
    metrics = pair_metrics(con, table, source)
    by_split = dict(
        con.execute(
            f"SELECT split, count(*) FROM {table} WHERE source = $source GROUP BY ALL", {"source": source}
        ).fetchall()
    )
    return {
        "dagster/row_count": int(metrics["rows"]),
        **{f"{split}_rows": n for split, n in sorted(by_split.items())},
        "quality": dg.MetadataValue.json(metrics),
        "config": dg.MetadataValue.json(config.model_dump()),
        "preview": dg.MetadataValue.md(pairs_preview(con, table, source)),
    }


def build_pair_asset(strategy: str, extra_deps: tuple = ()) -> dg.AssetsDefinition:
    """The asset of one pair strategy."""
    table = STRATEGIES[strategy]

    @dg.asset(
        code_version=code_version("pairs"),
        name=table,
        partitions_def=source_partitions,
        group_name="pairs",
        deps=[messages, conversations, *extra_deps],
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
        description=_DESCRIPTIONS[strategy] + _NEGATIVES,
    )
    def pair_asset(
        context: dg.AssetExecutionContext, config: PairConfig, warehouse: DuckDBResource
    ) -> dg.MaterializeResult:
        source = context.partition_key
        with connect(warehouse) as con:
            rows = build_pairs(con, strategy, source, config)
            metadata = quality_metadata(con, table, source, config)
        context.log.info(f"{table}[{source}]: {rows} pairs; quality {json.dumps(metadata['quality'].data)}")
        return dg.MaterializeResult(metadata=metadata)

    return pair_asset


thread_pairs, query_response_pairs, temporal_pairs = (build_pair_asset(s) for s in "ABC")
summary_pairs = build_pair_asset("D", extra_deps=(conversation_summaries,))
PAIR_ASSETS = [thread_pairs, query_response_pairs, temporal_pairs, summary_pairs]
