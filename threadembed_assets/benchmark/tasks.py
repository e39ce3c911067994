"""Benchmark tasks built from the warehouse: thread retrieval, response retrieval, summary-to-thread, and the
same on a held-out platform. Only conversations of the requested splits are used (the test split for scores)."""

from dataclasses import asdict, dataclass

import dagster as dg
import duckdb
import numpy as np
from pydantic import Field

from threadembed_assets.warehouse.render import RENDER_MESSAGE_SQL
from threadembed_assets.warehouse.schema import table_names

TASK_KINDS = ("thread", "response_message", "response_window", "summary")


class TaskConfig(dg.Config):
    """How benchmark tasks are cut (run config of `benchmark_tasks`)."""

    max_queries: int = Field(default=500, description="Queries per task and source.")
    window_messages: int = Field(default=3, description="Messages in a prefix or window.")
    candidates: int = Field(default=10, description="Response retrieval: the channel's next messages ranked.")
    max_doc_chars: int = Field(default=1500, description="A document longer than this is cut.")
    held_out_platform: str = Field(
        default="slack", description="Cross-platform transfer: tasks 1 and 2 again on this platform alone."
    )
    seed: int = Field(default=0, description="Which conversations give queries.")


def task_kind(name: str) -> str:
    """The kind of a task name: `summary_llm` -> summary, `thread@slack` -> thread."""
    return "summary" if name.startswith("summary") else name.split("@")[0]


@dataclass
class Task:
    """Queries with one relevant document each, over a corpus (optionally a candidate list per query)."""

    name: str
    source: str
    queries: list[str]
    query_ts: list[float | None]
    docs: list[str]
    doc_ids: list[str]
    doc_ts: list[tuple[float | None, float | None]]  # (start, end) time of a document
    relevant: list[int]  # index into docs per query
    candidates: list[list[int]] | None = None
    conversations: list[str] | None = None  # conversation of each query (to prove no training leakage)

    def allowed(self) -> np.ndarray | None:
        """Boolean (queries x docs) mask of the candidates, or None when every document is a candidate."""
        if self.candidates is None:
            return None
        mask = np.zeros((len(self.queries), len(self.docs)), dtype=bool)
        for row, indices in enumerate(self.candidates):
            mask[row, indices] = True
        return mask

    def to_dict(self) -> dict:
        return asdict(self)


def _lines(con: duckdb.DuckDBPyConnection, source: str, splits: list[str], platform: str | None) -> list[tuple]:
    return con.execute(
        f"""
        SELECT m.conversation_id, m.position, m.channel, epoch(m.ts), {RENDER_MESSAGE_SQL}, m.message_id,
            c.n_messages
        FROM messages m JOIN conversations c USING (source, conversation_id)
        WHERE m.source = $source AND list_contains($splits, c.split) AND ($platform IS NULL OR c.platform = $platform)
        ORDER BY m.channel, m.ts, m.conversation_id, m.position
        """,
        {"source": source, "splits": splits, "platform": platform},
    ).fetchall()


def _pick(ids: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = sorted(ids)
    return [ids[i] for i in sorted(rng.permutation(len(ids))[:n])]


def build_tasks(
    con: duckdb.DuckDBPyConnection,
    source: str,
    splits: list[str],
    config: TaskConfig,
    platform: str | None = None,
    suffix: str = "",
) -> list[Task]:
    """The thread, response and summary tasks of one source over conversations of `splits`."""
    rows = _lines(con, source, splits, platform)
    by_conversation: dict[str, list[tuple]] = {}
    for row in rows:
        by_conversation.setdefault(row[0], []).append(row)
    for lines in by_conversation.values():
        lines.sort(key=lambda r: r[1])
    long = [cid for cid, lines in by_conversation.items() if len(lines) >= 3]
    picked = _pick(long, config.max_queries, config.seed)
    tasks = [
        _thread_task(source, by_conversation, picked, config, suffix),
        _response_message_task(source, rows, by_conversation, picked, config, suffix),
        _response_window_task(source, by_conversation, picked, config, suffix),
    ]
    if platform is None:
        tasks += _summary_tasks(con, source, splits, by_conversation, config)
    return [task for task in tasks if task.queries]


def _span(lines: list[tuple]) -> tuple[float | None, float | None]:
    times = [r[3] for r in lines if r[3] is not None]
    return (min(times), max(times)) if times else (None, None)


def _conversation_corpus(
    by_conversation: dict[str, list[tuple]], max_chars: int, leave_out: dict[str, tuple] | None = None
) -> tuple[list[str], list[str], list[tuple[float | None, float | None]]]:
    """Ids, rendered documents and time spans of every conversation of 2+ messages; a conversation's message in
    `leave_out` (its query) is not part of its document."""
    leave_out = leave_out or {}
    doc_ids = [cid for cid, lines in by_conversation.items() if len(lines) >= 2]
    docs = ["\n".join(r[4] for r in by_conversation[cid] if leave_out.get(cid) is not r)[:max_chars] for cid in doc_ids]
    return doc_ids, docs, [_span(by_conversation[cid]) for cid in doc_ids]


def _thread_task(source, by_conversation, picked, config, suffix) -> Task:
    """A message finds its conversation; the message is left out of that conversation's document."""
    query_of = {cid: by_conversation[cid][len(by_conversation[cid]) // 2] for cid in picked}
    doc_ids, docs, spans = _conversation_corpus(by_conversation, config.max_doc_chars, leave_out=query_of)
    index = {cid: i for i, cid in enumerate(doc_ids)}
    return Task(
        name="thread" + suffix,
        source=source,
        queries=[query_of[cid][4] for cid in picked],
        query_ts=[query_of[cid][3] for cid in picked],
        docs=docs,
        doc_ids=doc_ids,
        doc_ts=spans,
        relevant=[index[cid] for cid in picked],
        conversations=picked,
    )


def _response_message_task(source, rows, by_conversation, picked, config, suffix) -> Task:
    """A conversation's prefix finds its next message among the channel's next messages (interleaved threads)."""
    order = {row[5]: i for i, row in enumerate(rows)}
    docs, doc_ids, doc_ts, doc_index = [], [], [], {}

    def doc(row) -> int:
        if row[5] not in doc_index:
            doc_index[row[5]] = len(docs)
            docs.append(row[4][: config.max_doc_chars])
            doc_ids.append(row[5])
            doc_ts.append((row[3], row[3]))
        return doc_index[row[5]]

    queries, query_ts, relevant, candidates, conversations = [], [], [], [], []
    for cid in picked:
        lines = by_conversation[cid]
        cut = max(1, len(lines) // 2)
        prefix, answer = lines[max(0, cut - config.window_messages) : cut], lines[cut]
        start = order[prefix[-1][5]] + 1
        others = [r for r in rows[start : start + 4 * config.candidates] if r[0] != cid and r[2] == answer[2]]
        others = others[: config.candidates - 1]
        if not others:
            continue
        queries.append("\n".join(r[4] for r in prefix))
        query_ts.append(prefix[-1][3])
        relevant.append(doc(answer))
        candidates.append([relevant[-1], *(doc(r) for r in others)])
        conversations.append(cid)
    return Task(
        "response_message" + suffix,
        source,
        queries,
        query_ts,
        docs,
        doc_ids,
        doc_ts,
        relevant,
        candidates,
        conversations,
    )


def _response_window_task(source, by_conversation, picked, config, suffix) -> Task:
    """A conversation's prefix finds its next window among every conversation's next window."""
    k = config.window_messages
    queries, query_ts, docs, doc_ids, doc_ts, conversations = [], [], [], [], [], []
    for cid in picked:
        lines = by_conversation[cid]
        cut = max(1, len(lines) // 2)
        prefix, window = lines[max(0, cut - k) : cut], lines[cut : cut + k]
        queries.append("\n".join(r[4] for r in prefix))
        query_ts.append(prefix[-1][3])
        docs.append("\n".join(r[4] for r in window)[: config.max_doc_chars])
        doc_ids.append(f"{cid}@{cut}")
        doc_ts.append(_span(window))
        conversations.append(cid)
    return Task(
        "response_window" + suffix,
        source,
        queries,
        query_ts,
        docs,
        doc_ids,
        doc_ts,
        list(range(len(queries))),
        None,
        conversations,
    )


def _summary_tasks(con, source, splits, by_conversation, config) -> list[Task]:
    """A summary finds its conversation, one task per summarizer (LLM and extractive are never mixed)."""
    if "conversation_summaries" not in table_names(con):
        return []
    summaries = con.execute(
        "SELECT summarizer, conversation_id, summary FROM conversation_summaries "
        "WHERE source = $source AND list_contains($splits, split) ORDER BY conversation_id",
        {"source": source, "splits": splits},
    ).fetchall()
    doc_ids, docs, spans = _conversation_corpus(by_conversation, config.max_doc_chars)
    index = {cid: i for i, cid in enumerate(doc_ids)}
    tasks = []
    for summarizer in sorted({s for s, _, _ in summaries}):
        chosen = [(cid, text) for s, cid, text in summaries if s == summarizer and cid in index][: config.max_queries]
        tasks.append(
            Task(
                f"summary_{summarizer}",
                source,
                [t for _, t in chosen],
                [None] * len(chosen),
                docs,
                doc_ids,
                spans,
                [index[c] for c, _ in chosen],
                None,
                [c for c, _ in chosen],
            )
        )
    return tasks


def all_tasks(con: duckdb.DuckDBPyConnection, splits: list[str], config: TaskConfig) -> list[Task]:
    """Tasks of every source in the warehouse, plus the held-out platform's thread and response tasks."""
    sources = [s for (s,) in con.execute("SELECT DISTINCT source FROM conversations ORDER BY 1").fetchall()]
    tasks = []
    for source in sources:
        tasks += build_tasks(con, source, splits, config)
        if config.held_out_platform:
            tasks += build_tasks(
                con, source, splits, config, platform=config.held_out_platform, suffix=f"@{config.held_out_platform}"
            )
    return tasks
