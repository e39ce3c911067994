"""Hard negatives mined with the stage 2 model, never from the anchor's own conversation."""

import json

import dagster as dg
import duckdb
import pyarrow as pa
from datasets import Dataset
from pydantic import Field
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

from threadembed_assets.pairs.build import PAIR_COLUMNS, STRATEGIES, pair_table_ddl
from threadembed_assets.training.data import (
    ALLOWED_CONVERSATION_SQL,
    ALLOWED_NEGATIVE_SQL,
    NEGATIVE_CONVERSATION_JOIN,
    PAIR_CONVERSATION_JOIN,
)
from threadembed_assets.warehouse.schema import transaction

HARD_NEGATIVE_TABLE = "hard_negative_pairs"


class MiningConfig(dg.Config):
    """Run config of `hard_negative_pairs`."""

    strategies: list[str] = Field(default=["A", "B"], description="Pair strategies whose train rows get negatives.")
    max_anchors: int = Field(default=3000, description="Train pairs per source to mine for (encoding budget).")
    num_negatives: int = Field(default=5, description="Candidates mined per anchor before conversation filtering.")
    relative_margin: float = Field(
        default=0.05, description="A candidate must score this much below the positive (false-negative guard)."
    )
    seed: int = Field(default=0, description="Which train pairs are picked when there are more than max_anchors.")
    exclude_platforms: list[str] = Field(
        default=[],
        description="Platforms whose conversations are neither mined for nor mined from (as in TrainConfig).",
    )


def load_mining_rows(con: duckdb.DuckDBPyConnection, source: str, config: MiningConfig) -> list[dict]:
    """Train pairs of `source` to mine for, with their conversation and interleaved negative.

    Pairs whose conversation is on a platform of `config.exclude_platforms` are left out, so that they are neither
    anchors nor (since candidates are the rows' positives) mined negatives; so are interleaved negatives from
    such a conversation.
    """
    union = " UNION ALL ".join(
        f"SELECT p.strategy, p.split, p.anchor, p.positive, CASE WHEN {ALLOWED_NEGATIVE_SQL} THEN p.negative END, "
        f"p.conversation_id, p.meta FROM {STRATEGIES[s]} p {PAIR_CONVERSATION_JOIN} {NEGATIVE_CONVERSATION_JOIN} "
        f"WHERE p.source = $source AND p.split = 'train' AND {ALLOWED_CONVERSATION_SQL}"
        for s in config.strategies
    )
    cursor = con.execute(
        f"SELECT * FROM ({union}) AS q(strategy, split, anchor, positive, negative, conversation_id, meta) "
        "ORDER BY hash(anchor, positive, $seed) LIMIT $limit",
        {
            "source": source,
            "seed": config.seed,
            "limit": config.max_anchors,
            "excluded": list(config.exclude_platforms),
        },
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def mine_rows(model: SentenceTransformer, rows: list[dict], config: MiningConfig, batch_size: int) -> list[dict]:
    """Rows with a mined negative: the most similar positive of another conversation, below the margin.

    `mine_hard_negatives` knows nothing of conversations, so it mines several candidates (n-tuple) and those that
    belong to the anchor's own conversation (or equal its positive) are dropped afterwards.
    """
    if not rows:
        return []
    conversations_of: dict[str, set[str]] = {}
    for row in rows:
        conversations_of.setdefault(row["positive"], set()).add(row["conversation_id"])
    by_anchor: dict[str, list[dict]] = {}
    for row in rows:
        by_anchor.setdefault(row["anchor"], []).append(row)
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]}),
        model,
        corpus=list(conversations_of),
        num_negatives=config.num_negatives,
        range_max=max(20, 4 * config.num_negatives),
        relative_margin=config.relative_margin,
        output_format="n-tuple",
        batch_size=batch_size,
        verbose=False,
    )
    negative_columns = [c for c in mined.column_names if c.startswith("negative")]
    out = []
    for record in mined:
        for row in by_anchor.get(record["anchor"], []):
            if row["positive"] != record["positive"]:
                continue
            for column in negative_columns:
                candidate = record[column]
                owners = conversations_of.get(candidate, set())
                if candidate in (row["positive"], row["anchor"]) or row["conversation_id"] in owners:
                    continue
                meta = {
                    **json.loads(row["meta"] or "{}"),
                    "negative_kind": "mined",
                    "negative_conversation_id": sorted(owners)[0] if owners else None,
                }
                out.append({**row, "negative": candidate, "meta": json.dumps(meta)})
                break
    return out


def write_hard_negative_pairs(con: duckdb.DuckDBPyConnection, source: str, rows: list[dict], mined: list[dict]) -> int:
    """Replace the partition's rows: mined negatives plus the interleaved-thread negatives of the same pairs."""
    interleaved = [
        {**row, "meta": json.dumps({**json.loads(row["meta"] or "{}"), "negative_kind": "interleaved"})}
        for row in rows
        if row["negative"] is not None
    ]
    records = [{**row, "source": source} for row in mined + interleaved]
    table = pa.table(
        {c: [r[c] for r in records] for c in PAIR_COLUMNS}, schema=pa.schema([(c, pa.string()) for c in PAIR_COLUMNS])
    )
    con.execute(pair_table_ddl(HARD_NEGATIVE_TABLE))
    try:
        with transaction(con):
            con.execute(f"DELETE FROM {HARD_NEGATIVE_TABLE} WHERE source = $source", {"source": source})
            con.register("new_pairs", table)
            con.execute(f"INSERT INTO {HARD_NEGATIVE_TABLE} SELECT {', '.join(PAIR_COLUMNS)} FROM new_pairs")
    finally:
        con.unregister("new_pairs")
    return len(records)
