"""Training data from the warehouse: train-split pairs of every source, and the dev thread-retrieval set."""

import duckdb
from datasets import Dataset

from threadembed_assets.warehouse.render import RENDER_MESSAGE_SQL
from threadembed_assets.warehouse.schema import table_names


def load_pairs(
    con: duckdb.DuckDBPyConnection, tables: list[str], max_pairs: int, seed: int, with_negative: bool = False
) -> Dataset:
    """Train-split pairs of all sources from `tables` (STRATEGIES names), shuffled, at most `max_pairs`.

    Columns: anchor, positive (and negative when `with_negative`, keeping only rows that have one).
    """
    existing = table_names(con)
    missing = [table for table in tables if table not in existing]
    if missing:
        raise ValueError(f"pair tables {missing} do not exist yet: materialize them first")
    columns = "anchor, positive, negative" if with_negative else "anchor, positive"
    union = " UNION ALL ".join(
        f"SELECT {columns} FROM {table} WHERE split = 'train'" + (" AND negative IS NOT NULL" if with_negative else "")
        for table in tables
    )
    table = con.sql(
        f"SELECT * FROM ({union}) ORDER BY hash(anchor, positive, $seed) LIMIT $limit",
        params={"seed": seed, "limit": max_pairs},
    ).to_arrow_table()
    return Dataset(table)


def pairs_digest(con: duckdb.DuckDBPyConnection, tables: list[str]) -> str:
    """A fingerprint of the train pairs of `tables`: changes whenever their content does."""
    union = " UNION ALL ".join(f"SELECT anchor, positive, negative FROM {t} WHERE split = 'train'" for t in tables)
    count, total = con.execute(f"SELECT count(*), sum(hash(anchor, positive, negative)) FROM ({union})").fetchone()
    return f"{count}-{total}"


def thread_retrieval_set(
    con: duckdb.DuckDBPyConnection, split: str, n_queries: int, seed: int, max_chars: int = 1500
) -> tuple[dict, dict, dict]:
    """Queries, corpus and relevant docs for thread retrieval on `split`: a message finds its conversation.

    One query per conversation of 3+ messages (its middle message), whose document leaves that message out; the
    corpus holds every conversation of the split (of those sources) as distractors, the interleaved ones included.
    """
    rows = con.execute(
        f"""
        WITH picked AS (
            SELECT source, conversation_id, n_messages FROM conversations
            WHERE split = $split AND n_messages >= 3
            ORDER BY hash(source, conversation_id, $seed) LIMIT $n
        ), lines AS (
            SELECT m.source, m.conversation_id, m.position, {RENDER_MESSAGE_SQL} AS line,
                p.n_messages IS NOT NULL AND m.position = p.n_messages // 2 AS is_query
            FROM messages m JOIN conversations c USING (source, conversation_id)
            LEFT JOIN picked p USING (source, conversation_id)
            WHERE c.split = $split AND c.n_messages >= 2
                AND m.source IN (SELECT DISTINCT source FROM picked)
        )
        SELECT source || '/' || conversation_id,
            max(CASE WHEN is_query THEN line END),
            left(string_agg(CASE WHEN NOT is_query THEN line END, chr(10) ORDER BY position), $max_chars)
        FROM lines GROUP BY ALL
        """,
        {"split": split, "n": n_queries, "seed": seed, "max_chars": max_chars},
    ).fetchall()
    corpus = {doc_id: text for doc_id, _, text in rows if text}
    queries = {doc_id: query for doc_id, query, _ in rows if query and doc_id in corpus}
    return queries, corpus, {doc_id: {doc_id} for doc_id in queries}
