"""Training data from the warehouse: train-split pairs of every source, and the dev retrieval sets (thread and
next message) a stage is measured on.

Every reader takes `exclude_platforms`: conversations of those platforms (the `platform` of the `conversations`
row that a pair's (source, conversation_id) names) never reach a stage, neither as pairs nor as evaluation.
"""

import duckdb
import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from threadembed_assets.evaluation.tasks import TaskConfig, thread_task
from threadembed_assets.warehouse.schema import table_names

# The conversations of a pair `p`: its own (`c`) and the one its negative comes from (`nc`,
# meta.negative_conversation_id), for the platform filters below.
PAIR_CONVERSATION_JOIN = "LEFT JOIN conversations c ON c.source = p.source AND c.conversation_id = p.conversation_id"
NEGATIVE_CONVERSATION_JOIN = (
    "LEFT JOIN conversations nc ON nc.source = p.source "
    "AND nc.conversation_id = json_extract_string(p.meta, '$.negative_conversation_id')"
)
# A pair's conversation is on an allowed platform. With nothing excluded every pair passes (even one whose
# conversation row is gone); with exclusions, a pair whose conversation's platform is unknown is left out too.
ALLOWED_CONVERSATION_SQL = "(len($excluded) = 0 OR coalesce(NOT list_contains($excluded, c.platform), false))"
# The conversation a pair's negative comes from is not on an excluded platform.
ALLOWED_NEGATIVE_SQL = "NOT coalesce(list_contains($excluded, nc.platform), false)"

# Columns of a training row that only the batch sampler reads (never the loss): the row's conversation and the one
# its negative comes from, as values no text can equal. A batch holds no value twice, so no row's positive or
# negative is another row's in-batch false negative.
GROUP_COLUMNS = ("conversation", "negative_conversation")
_KEY_SQL = "'conversation:' || p.source || '/' || "


def _train_pairs_sql(table: str) -> str:
    """The train pairs of `table` (a STRATEGIES name, never user input) outside $excluded: anchor, positive, the
    negative (NULL when there is none or it comes from an excluded platform) and the GROUP_COLUMNS."""
    negative_id = "json_extract_string(p.meta, '$.negative_conversation_id')"
    return (
        f"SELECT '{table}' AS pair_table, p.anchor, p.positive, "
        f"CASE WHEN {ALLOWED_NEGATIVE_SQL} THEN p.negative END AS negative, "
        f"{_KEY_SQL}p.conversation_id AS conversation, "
        f"{_KEY_SQL}CASE WHEN p.negative IS NOT NULL AND {ALLOWED_NEGATIVE_SQL} "
        f"THEN coalesce({negative_id}, p.conversation_id) ELSE p.conversation_id END AS negative_conversation, "
        f"p.source FROM {table} p {PAIR_CONVERSATION_JOIN} {NEGATIVE_CONVERSATION_JOIN} "
        f"WHERE p.split = 'train' AND {ALLOWED_CONVERSATION_SQL}"
    )


def _check_tables(con: duckdb.DuckDBPyConnection, tables: list[str]) -> None:
    existing = table_names(con)
    missing = [table for table in tables if table not in existing]
    if missing:
        raise ValueError(f"pair tables {missing} do not exist yet: materialize them first")


def _union(tables: list[str]) -> str:
    return " UNION ALL ".join(_train_pairs_sql(table) for table in tables)


def load_training_sets(
    con: duckdb.DuckDBPyConnection,
    tables: list[str],
    max_pairs: int,
    seed: int,
    *,
    negatives: bool = True,
    separate_conversations: bool = True,
    exclude_platforms: list[str] | tuple[str, ...] = (),
) -> DatasetDict:
    """Train-split pairs of all sources from `tables` (STRATEGIES names), shuffled, at most `max_pairs` in all, as
    one dataset per table and shape, for sentence-transformers' multi-dataset batching (a batch comes from one):

    - `<table>`: rows with a negative, as (anchor, positive, negative) triplets (only with `negatives`);
    - `<table>/pairs`: the other rows, (anchor, positive).

    With `separate_conversations` every dataset also has the GROUP_COLUMNS. Pairs whose conversation is on a
    platform of `exclude_platforms` are left out; a negative from such a conversation is dropped from its row.
    """
    _check_tables(con, tables)
    table = con.sql(
        f"SELECT * FROM ({_union(tables)}) ORDER BY hash(anchor, positive, $seed) LIMIT $limit",
        params={"seed": seed, "limit": max_pairs, "excluded": list(exclude_platforms)},
    ).to_arrow_table()
    extra = list(GROUP_COLUMNS) if separate_conversations else []
    sets = {}
    for name in tables:
        rows = table.filter(pc.equal(table["pair_table"], name))
        has_negative = pc.is_valid(rows["negative"])
        if negatives:
            shapes = [
                (name, rows.filter(has_negative), ["negative"]),
                (f"{name}/pairs", rows.filter(pc.invert(has_negative)), []),
            ]
        else:
            shapes = [(f"{name}/pairs", rows, [])]
        for key, subset, negative in shapes:
            part = subset.select(["anchor", "positive", *negative, *extra])
            if part.num_rows:
                sets[key] = Dataset(part)
    return DatasetDict(sets)


def training_set_summary(sets: DatasetDict) -> dict[str, dict]:
    """Rows and columns of each training dataset (what the trainer read), for metadata."""
    return {name: {"rows": len(data), "columns": data.column_names} for name, data in sets.items()}


def pair_sources(
    con: duckdb.DuckDBPyConnection, tables: list[str], exclude_platforms: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The sources that have train pairs in `tables` outside `exclude_platforms` (what a stage draws from)."""
    _check_tables(con, tables)
    rows = con.execute(
        f"SELECT DISTINCT source FROM ({_union(tables)}) ORDER BY source", {"excluded": list(exclude_platforms)}
    ).fetchall()
    return [source for (source,) in rows]


def pairs_digest(
    con: duckdb.DuckDBPyConnection, tables: list[str], exclude_platforms: list[str] | tuple[str, ...] = ()
) -> str:
    """A fingerprint of the train pairs of `tables` that a stage may draw: changes whenever their content does."""
    count, total = con.execute(
        f"SELECT count(*), sum(hash(anchor, positive, negative)) FROM ({_union(tables)})",
        {"excluded": list(exclude_platforms)},
    ).fetchone()
    return f"{count}-{total}"


def thread_retrieval_set(
    con: duckdb.DuckDBPyConnection,
    split: str,
    n_queries: int,
    seed: int,
    max_chars: int = 1500,
    exclude_platforms: list[str] | tuple[str, ...] = (),
) -> tuple[dict, dict, dict]:
    """Queries, corpus and relevant docs for thread retrieval on `split`: a message finds its conversation.

    The benchmark's thread task of each source (`evaluation.tasks.thread_task`): a conversation of 3+ messages of
    `split` asks with its middle message, left out of its document; the corpus is every query's candidates, the
    conversations of its channel active near it (the interleaved ones first of all), of whatever split, ranked here
    all together. Conversations on a platform of `exclude_platforms` are neither queries nor documents. At most
    `n_queries` queries in all, a seeded choice across sources.
    """
    config = TaskConfig(max_queries=n_queries, seed=seed, max_doc_chars=max_chars)
    sources = con.execute(
        "SELECT DISTINCT source FROM conversations WHERE split = $split AND NOT list_contains($excluded, platform) "
        "ORDER BY source",
        {"split": split, "excluded": list(exclude_platforms)},
    ).fetchall()
    queries, corpus, relevant = {}, {}, {}
    for (source,) in sources:
        task = thread_task(con, source, [split], config, exclude_platforms)
        corpus.update({f"{source}/{doc_id}": doc for doc_id, doc in zip(task.doc_ids, task.docs, strict=True)})
        for text, doc, conversation in zip(task.queries, task.relevant, task.conversations, strict=True):
            queries[f"{source}/{conversation}"] = text
            relevant[f"{source}/{conversation}"] = {f"{source}/{task.doc_ids[doc]}"}
    if len(queries) > n_queries:
        kept = np.random.default_rng(seed).choice(sorted(queries), size=n_queries, replace=False)
        queries = {query_id: queries[query_id] for query_id in sorted(kept)}
        relevant = {query_id: relevant[query_id] for query_id in queries}
    return queries, corpus, relevant


def next_message_retrieval_set(
    con: duckdb.DuckDBPyConnection,
    split: str,
    n_queries: int,
    seed: int,
    exclude_platforms: list[str] | tuple[str, ...] = (),
) -> tuple[dict, dict, dict]:
    """Queries, corpus and relevant docs for next-message retrieval on `split`: a prefix (the messages before a
    message, a `temporal_pairs` row of kind `next_message`) finds that message. One query per conversation, so that
    no query's own prefix lines are another query's answer; the corpus holds the queries' next messages and their
    interleaved neighbours (the rows' negatives). Empty when `temporal_pairs` has not been built."""
    if "temporal_pairs" not in table_names(con):
        return {}, {}, {}
    rows = con.execute(
        f"""
        SELECT p.source || '/' || json_extract_string(p.meta, '$.anchor_message_id') AS query_id, p.anchor,
            p.positive, p.negative
        FROM temporal_pairs p {PAIR_CONVERSATION_JOIN}
        WHERE p.split = $split AND json_extract_string(p.meta, '$.kind') = 'next_message'
            AND {ALLOWED_CONVERSATION_SQL}
        QUALIFY row_number() OVER (PARTITION BY p.source, p.conversation_id ORDER BY hash(query_id, $seed)) = 1
        ORDER BY hash(query_id, $seed) LIMIT $n
        """,
        {"split": split, "seed": seed, "n": n_queries, "excluded": list(exclude_platforms)},
    ).fetchall()
    texts = list(dict.fromkeys(text for _, _, positive, negative in rows for text in (positive, negative) if text))
    doc_id = {text: f"m{index}" for index, text in enumerate(texts)}
    queries = {query_id: anchor for query_id, anchor, *_ in rows}
    relevant = {query_id: {doc_id[positive]} for query_id, _, positive, _ in rows}
    return queries, {i: text for text, i in doc_id.items()}, relevant


def dev_retrieval_sets(
    con: duckdb.DuckDBPyConnection, n_queries: int, seed: int, exclude_platforms: list[str] | tuple[str, ...] = ()
) -> dict[str, tuple[dict, dict, dict]]:
    """The dev-split retrieval sets a stage is measured and selected on, by task: `thread` (a message finds its
    conversation) and `next_message` (a prefix finds the next message); a task without queries is left out."""
    sets = {
        "thread": thread_retrieval_set(con, "dev", n_queries, seed, exclude_platforms=exclude_platforms),
        "next_message": next_message_retrieval_set(con, "dev", n_queries, seed, exclude_platforms=exclude_platforms),
    }
    return {task: retrieval for task, retrieval in sets.items() if retrieval[0]}
