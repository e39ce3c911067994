"""Conversation summaries: pick conversations, summarize what the cache lacks, write the partition's rows.

LLM results go to `summary_cache` (keyed by content hash, model and prompt version) the moment each arrives, so
a run that dies keeps what it finished and the next run asks only for what is missing.
"""

import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import dagster as dg
import duckdb
import pyarrow as pa
from pydantic import Field

from threadembed_assets.summaries.client import LLMCallFailed, LLMResource
from threadembed_assets.summaries.extractive import extractive_summaries
from threadembed_assets.summaries.prompt import PROMPT_VERSION, summary_messages
from threadembed_assets.warehouse.render import render_window
from threadembed_assets.warehouse.schema import transaction

_DDL = [
    """CREATE TABLE IF NOT EXISTS summary_cache (
        content_hash VARCHAR NOT NULL, model VARCHAR NOT NULL, prompt_version VARCHAR NOT NULL,
        summary VARCHAR NOT NULL, tokens_in INTEGER, tokens_out INTEGER, created_at TIMESTAMP DEFAULT now(),
        PRIMARY KEY (content_hash, model, prompt_version))""",
    """CREATE TABLE IF NOT EXISTS conversation_summaries (
        source VARCHAR NOT NULL, conversation_id VARCHAR NOT NULL, split VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL, summarizer VARCHAR NOT NULL, model VARCHAR NOT NULL,
        prompt_version VARCHAR NOT NULL, summary VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS summary_failures (
        source VARCHAR NOT NULL, conversation_id VARCHAR NOT NULL, content_hash VARCHAR NOT NULL,
        model VARCHAR NOT NULL, prompt_version VARCHAR NOT NULL, kind VARCHAR NOT NULL, message VARCHAR,
        attempts INTEGER)""",
]


class SummaryConfig(dg.Config):
    """Which conversations get a summary, and what tokens cost (run config of `conversation_summaries`)."""

    count: int = Field(default=300, description="Conversations to summarize per source.")
    min_messages: int = Field(default=3, description="Shorter conversations are skipped.")
    splits: list[str] = Field(
        default=["train", "dev", "test"], description="Splits to summarize; test summaries feed the benchmark."
    )
    max_conversation_chars: int = Field(default=4000, description="Rendered conversation cut to this for the LLM.")
    price_in_per_million: dict[str, float] = Field(
        default={"gpt-4o-mini": 0.15, "gpt-4.1-mini": 0.40}, description="USD per 1M input tokens, by model."
    )
    price_out_per_million: dict[str, float] = Field(
        default={"gpt-4o-mini": 0.60, "gpt-4.1-mini": 1.60}, description="USD per 1M output tokens, by model."
    )


@dataclass(frozen=True)
class Conversation:
    """A conversation picked for a summary."""

    conversation_id: str
    split: str
    turns: list[tuple[str | None, str]]
    rendered: str
    content_hash: str


@dataclass
class SummaryStats:
    """What a summary run did, for metadata."""

    requested: int = 0
    cache_hits: int = 0
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: Counter = field(default_factory=Counter)
    failure_examples: list[str] = field(default_factory=list)


def ensure_summary_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the summary tables that do not exist yet."""
    for ddl in _DDL:
        con.execute(ddl)


def select_conversations(con: duckdb.DuckDBPyConnection, source: str, config: SummaryConfig) -> list[Conversation]:
    """Up to `count` conversations of the chosen splits with enough messages, in a stable order."""
    rows = con.execute(
        """
        WITH picked AS (
            SELECT conversation_id, split FROM conversations
            WHERE source = $source AND n_messages >= $min_messages AND list_contains($splits, split)
            ORDER BY hash(conversation_id), conversation_id LIMIT $count
        )
        SELECT p.conversation_id, p.split, list(m.author ORDER BY m.position), list(m.text ORDER BY m.position),
            any_value(m.platform)
        FROM picked p JOIN messages m ON m.source = $source AND m.conversation_id = p.conversation_id
        GROUP BY ALL ORDER BY p.conversation_id
        """,
        {"source": source, "min_messages": config.min_messages, "splits": config.splits, "count": config.count},
    ).fetchall()
    picked = []
    for conversation_id, split, authors, texts, platform in rows:
        turns = list(zip(authors, texts, strict=True))
        rendered = render_window(turns, platform)[: config.max_conversation_chars]
        content_hash = hashlib.sha256(rendered.encode()).hexdigest()
        picked.append(Conversation(conversation_id, split, turns, rendered, content_hash))
    return picked


def summarize_with_llm(
    open_warehouse: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    source: str,
    conversations: list[Conversation],
    llm: LLMResource,
    log=None,
) -> SummaryStats:
    """Ask the LLM for every conversation whose content is not cached; cache each answer as it arrives.

    The warehouse is opened (`open_warehouse()`) only to read the cache and to write each answer or failure, never
    while waiting on the LLM, so other processes can read it between answers.
    """
    stats = SummaryStats(requested=len(conversations))
    with open_warehouse() as con:
        cached = {
            h
            for (h,) in con.execute(
                "SELECT content_hash FROM summary_cache WHERE model = $model AND prompt_version = $version",
                {"model": llm.model, "version": PROMPT_VERSION},
            ).fetchall()
        }
        con.execute("DELETE FROM summary_failures WHERE source = $source", {"source": source})
    missing = {c.content_hash: c for c in conversations if c.content_hash not in cached}
    stats.cache_hits = len(conversations) - sum(1 for c in conversations if c.content_hash in missing)
    waiting = iter(missing.values())
    with ThreadPoolExecutor(max_workers=llm.max_concurrency) as pool:
        running: dict = {}

        def send_next() -> None:
            conversation = next(waiting, None)
            if conversation is not None:
                running[pool.submit(llm.complete, summary_messages(conversation.rendered))] = conversation

        # A request goes out only once an earlier answer is written: when the warehouse is busy, answers never pile
        # up in memory, and a run that dies loses at most the `max_concurrency` answers in flight.
        for _ in range(llm.max_concurrency):
            send_next()
        finished = 0
        while running:
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                _record_answer(open_warehouse, source, running.pop(future), future, llm.model, stats)
                finished += 1
                if log is not None and finished % 25 == 0:
                    log(f"{finished}/{len(missing)} summaries requested so far")
                send_next()
    return stats


def _record_answer(open_warehouse, source: str, conversation: Conversation, future, model: str, stats: SummaryStats):
    """Write one finished request to `summary_cache` or `summary_failures` and count it."""
    try:
        done = future.result()
    except LLMCallFailed as failure:
        stats.calls += failure.attempts
        stats.failures[failure.kind] += 1
        if len(stats.failure_examples) < 5:
            stats.failure_examples.append(f"{conversation.conversation_id}: {failure}")
        row = [source, conversation.conversation_id, conversation.content_hash, model, PROMPT_VERSION]
        with open_warehouse() as con:
            con.execute(
                "INSERT INTO summary_failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [*row, failure.kind, failure.message, failure.attempts],
            )
        return
    stats.calls += done.attempts
    stats.tokens_in += done.tokens_in
    stats.tokens_out += done.tokens_out
    with open_warehouse() as con:
        con.execute(
            "INSERT OR REPLACE INTO summary_cache (content_hash, model, prompt_version, summary, tokens_in, "
            "tokens_out) VALUES (?, ?, ?, ?, ?, ?)",
            [conversation.content_hash, model, PROMPT_VERSION, done.text, done.tokens_in, done.tokens_out],
        )


def write_summaries(
    con: duckdb.DuckDBPyConnection,
    source: str,
    conversations: list[Conversation],
    summarizer: str,
    model: str,
    prompt_version: str,
    summaries: dict[str, str],
) -> int:
    """Replace the partition's rows of `conversation_summaries` with those conversations that have a summary."""
    rows = [
        (
            source,
            c.conversation_id,
            c.split,
            c.content_hash,
            summarizer,
            model,
            prompt_version,
            summaries[c.content_hash],
        )
        for c in conversations
        if c.content_hash in summaries
    ]
    names = ["source", "conversation_id", "split", "content_hash", "summarizer", "model", "prompt_version", "summary"]
    table = pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(names)},
        schema=pa.schema([(n, pa.string()) for n in names]),
    )
    try:
        with transaction(con):
            con.execute("DELETE FROM conversation_summaries WHERE source = $source", {"source": source})
            con.register("new_summaries", table)
            con.execute("INSERT INTO conversation_summaries SELECT * FROM new_summaries")
    finally:
        con.unregister("new_summaries")
    return len(rows)


def cached_summaries(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, str]:
    """Content hash -> summary of every cached LLM summary of `model` under the current prompt."""
    return dict(
        con.execute(
            "SELECT content_hash, summary FROM summary_cache WHERE model = $model AND prompt_version = $version",
            {"model": model, "version": PROMPT_VERSION},
        ).fetchall()
    )


def extractive_for(conversations: list[Conversation]) -> dict[str, str]:
    """Content hash -> extractive summary."""
    by_id = extractive_summaries({c.conversation_id: c.turns for c in conversations})
    return {c.content_hash: by_id[c.conversation_id] for c in conversations}


def estimated_cost(stats: SummaryStats, model: str, config: SummaryConfig) -> float | None:
    """USD for the tokens used, from the configured price table (None when the model has no price)."""
    if model not in config.price_in_per_million:
        return None
    return (
        stats.tokens_in * config.price_in_per_million[model]
        + stats.tokens_out * config.price_out_per_million.get(model, 0.0)
    ) / 1e6
