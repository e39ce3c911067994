"""Pair tables per strategy, built in SQL from the warehouse.

Every strategy draws anchors and positives from one conversation and, where one exists, a negative from the
interleaved thread: the nearest message of another conversation in the same channel and split, within a time
span. Rows keep their conversation's split, so train rows never see a dev/test conversation.
"""

import dagster as dg
import duckdb
from pydantic import Field

from threadembed_assets.warehouse.render import RENDER_MESSAGE_SQL
from threadembed_assets.warehouse.schema import transaction

PAIR_COLUMNS = ["strategy", "source", "split", "anchor", "positive", "negative", "conversation_id", "meta"]
STRATEGIES = {"A": "thread_pairs", "B": "query_response_pairs", "C": "temporal_pairs", "D": "summary_pairs"}


class PairConfig(dg.Config):
    """How pairs are cut from conversations (run config of the pair assets)."""

    window_messages: int = Field(default=3, description="Messages on each side of an anchor in a thread window.")
    thread_positive: str = Field(
        default="conversation",
        description="Strategy A's positive: `conversation` (the rest of the anchor's conversation, the shape thread "
        "retrieval compares a message with; negative: the interleaved conversation) or `window` (the "
        "`window_messages` on each side; negative: the window around the interleaved neighbour).",
    )
    temporal_window: int = Field(default=3, description="Messages per window in temporal pairs.")
    next_message_pairs: bool = Field(
        default=True,
        description="Temporal pairs also hold `prefix -> next message` rows: the `window_messages` messages before "
        "a message and that message (negative: the interleaved neighbour), the shape of next-message retrieval.",
    )
    response_messages: int = Field(default=2, description="Reply messages joined into a response.")
    max_message_chars: int = Field(default=300, description="A message longer than this is cut.")
    max_window_chars: int = Field(default=1000, description="A window longer than this is cut (model input).")
    max_pairs_per_conversation: int = Field(
        default=8, description="Cap so that long conversations do not dominate a table."
    )
    negative_max_gap_minutes: float = Field(
        default=120.0, description="A negative must be this close in time to its anchor (when times are known)."
    )
    seed: int = Field(default=0, description="Picks which anchors of a long conversation are kept.")


def pair_table_ddl(table: str) -> str:
    """DDL of a pair table (table names come from STRATEGIES, never from user input)."""
    return f"""
    CREATE TABLE IF NOT EXISTS {table} (
        strategy VARCHAR NOT NULL, source VARCHAR NOT NULL, split VARCHAR NOT NULL,
        anchor VARCHAR NOT NULL, positive VARCHAR NOT NULL, negative VARCHAR,
        conversation_id VARCHAR NOT NULL, meta JSON
    )"""


# One row per message of the source with its rendered line, the thread windows around it, and its interleaved
# neighbour: the nearest message (in channel order, same split) that belongs to another conversation.
_CONTEXT_SQL = f"""
CREATE OR REPLACE TEMP TABLE pair_context AS
WITH lines AS (
    SELECT m.*, c.n_messages,
        left({RENDER_MESSAGE_SQL}, $max_message_chars) AS line,
        row_number() OVER (PARTITION BY m.channel, m.split ORDER BY m.ts, m.conversation_id, m.position)
            AS channel_order
    FROM messages m JOIN conversations c USING (source, conversation_id)
    WHERE m.source = $source
), windows AS (
    SELECT *,
        string_agg(line, chr(10)) OVER (PARTITION BY conversation_id ORDER BY position
            ROWS BETWEEN $k PRECEDING AND 1 PRECEDING) AS before_window,
        string_agg(line, chr(10)) OVER (PARTITION BY conversation_id ORDER BY position
            ROWS BETWEEN 1 FOLLOWING AND $k FOLLOWING) AS after_window,
        string_agg(line, chr(10)) OVER (PARTITION BY conversation_id ORDER BY position
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING EXCLUDE CURRENT ROW) AS conversation_rest,
        string_agg(line, chr(10)) OVER (PARTITION BY conversation_id ORDER BY position
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS conversation_text,
        position // $w AS chunk,
        {
    ", ".join(
        f"lead(message_id, {i}) OVER ch AS lead_id_{i}, lead(conversation_id, {i}) OVER ch AS lead_conv_{i}, "
        f"lead(ts, {i}) OVER ch AS lead_ts_{i}, lag(message_id, {i}) OVER ch AS lag_id_{i}, "
        f"lag(conversation_id, {i}) OVER ch AS lag_conv_{i}, lag(ts, {i}) OVER ch AS lag_ts_{i}"
        for i in range(1, 5)
    )
}
    FROM lines
    WINDOW ch AS (PARTITION BY channel, split ORDER BY channel_order)
)
SELECT * EXCLUDE ({
    ", ".join(f"lead_id_{i}, lead_conv_{i}, lead_ts_{i}, lag_id_{i}, lag_conv_{i}, lag_ts_{i}" for i in range(1, 5))
}),
    CASE
        {
    " ".join(
        f"WHEN lead_conv_{i} != conversation_id AND (ts IS NULL OR abs(epoch(lead_ts_{i}) - epoch(ts)) <= $gap_s)"
        f" THEN lead_id_{i} WHEN lag_conv_{i} != conversation_id AND "
        f"(ts IS NULL OR abs(epoch(lag_ts_{i}) - epoch(ts)) <= $gap_s) THEN lag_id_{i}"
        for i in range(1, 5)
    )
}
    END AS neighbour_id
FROM windows
"""

_CHUNKS_SQL = """
CREATE OR REPLACE TEMP TABLE pair_chunks AS
SELECT conversation_id, chunk, any_value(split) AS split, min(position) AS first_position,
    left(string_agg(line, chr(10) ORDER BY position), $max_window_chars) AS window_text
FROM pair_context GROUP BY conversation_id, chunk
"""

# Strategy A: a message and its own conversation, the message itself left out (the rest of the conversation, or
# the window around the message); negative: the interleaved neighbour's conversation (or the window around it).
_THREAD_SQL = """
SELECT 'A', $source, a.split, a.line,
    left(CASE WHEN $thread_positive = 'conversation' THEN a.conversation_rest
        ELSE concat_ws(chr(10), a.before_window, a.after_window) END, $max_window_chars),
    CASE WHEN n.message_id IS NOT NULL THEN left(CASE WHEN $thread_positive = 'conversation' THEN n.conversation_text
        ELSE concat_ws(chr(10), n.before_window, n.line, n.after_window) END, $max_window_chars) END,
    a.conversation_id,
    json_object('anchor_message_id', a.message_id, 'channel', a.channel,
                'negative_message_id', n.message_id, 'negative_conversation_id', n.conversation_id)
FROM pair_context a LEFT JOIN pair_context n ON n.message_id = a.neighbour_id
WHERE a.n_messages >= 2
QUALIFY row_number() OVER (PARTITION BY a.conversation_id ORDER BY hash(a.message_id, $seed))
    <= $max_pairs_per_conversation
"""

# Strategy B: a question-like message (question mark, interrogative opening, or a conversation's opener) and its
# answer: the messages replying to it, else the following messages of its conversation by other authors.
_QUERY_RESPONSE_SQL = """
WITH questions AS (
    SELECT * FROM pair_context
    WHERE n_messages >= 2 AND (
        contains(text, '?')
        OR regexp_matches(lower(text), '^\\W*(how|what|why|when|where|who|which|is|are|can|could|does|do|did|'
                                       || 'should|would|will|has|have|anyone|any)\\b')
        OR position = 0)
), candidates AS (
    SELECT q.message_id AS question_id, r.position, r.line, 0 AS kind
    FROM questions q JOIN pair_context r ON r.reply_to = q.message_id AND r.conversation_id = q.conversation_id
    UNION ALL
    SELECT q.message_id, r.position, r.line, 1
    FROM questions q JOIN pair_context r ON r.conversation_id = q.conversation_id
        AND r.position > q.position AND r.position <= q.position + $response_messages + 2
        AND coalesce(r.author, '') != coalesce(q.author, '')
), chosen AS (
    SELECT * FROM candidates
    QUALIFY kind = min(kind) OVER (PARTITION BY question_id)
        AND row_number() OVER (PARTITION BY question_id, kind ORDER BY position) <= $response_messages
), answers AS (
    SELECT question_id, any_value(kind) AS kind,
        left(string_agg(line, chr(10) ORDER BY position), $max_window_chars) AS answer
    FROM chosen GROUP BY question_id
)
SELECT 'B', $source, q.split, q.line, answers.answer, n.line, q.conversation_id,
    json_object('anchor_message_id', q.message_id, 'channel', q.channel,
                'answer_from', CASE answers.kind WHEN 0 THEN 'reply_to' ELSE 'following' END,
                'negative_message_id', n.message_id, 'negative_conversation_id', n.conversation_id)
FROM questions q JOIN answers ON answers.question_id = q.message_id
LEFT JOIN pair_context n ON n.message_id = q.neighbour_id
QUALIFY row_number() OVER (PARTITION BY q.conversation_id ORDER BY q.position) <= $max_pairs_per_conversation
"""

# Strategy C: consecutive windows of one conversation; negative: the window of the interleaved thread that holds
# the neighbour of the positive window's first message. With $next_message_pairs, also the messages before a message
# (its prefix) and that message; negative: its interleaved neighbour (another conversation's message of that moment).
_TEMPORAL_SQL = """
(SELECT 'C', $source, a.split, a.window_text, b.window_text, neg.window_text, a.conversation_id,
    json_object('kind', 'next_window', 'anchor_chunk', a.chunk, 'channel', first_message.channel,
                'negative_message_id', n.message_id, 'negative_conversation_id', n.conversation_id)
FROM pair_chunks a
JOIN pair_chunks b ON b.conversation_id = a.conversation_id AND b.chunk = a.chunk + 1
JOIN pair_context first_message
    ON first_message.conversation_id = b.conversation_id AND first_message.position = b.first_position
LEFT JOIN pair_context n ON n.message_id = first_message.neighbour_id
LEFT JOIN pair_chunks neg ON neg.conversation_id = n.conversation_id AND neg.chunk = n.chunk
QUALIFY row_number() OVER (PARTITION BY a.conversation_id ORDER BY hash(a.chunk, $seed))
    <= $max_pairs_per_conversation)
UNION ALL
(SELECT 'C', $source, a.split, a.before_window, a.line, n.line, a.conversation_id,
    json_object('kind', 'next_message', 'anchor_message_id', a.message_id, 'channel', a.channel,
                'negative_message_id', n.message_id, 'negative_conversation_id', n.conversation_id)
FROM pair_context a LEFT JOIN pair_context n ON n.message_id = a.neighbour_id
WHERE $next_message_pairs AND a.before_window IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY a.conversation_id ORDER BY hash(a.message_id, $seed))
    <= $max_pairs_per_conversation)
"""

# Strategy D: a conversation's summary and the conversation itself (its opening window); negative: the window of
# the interleaved conversation nearest to its first message.
_SUMMARY_SQL = """
WITH windows AS (
    SELECT conversation_id, left(string_agg(line, chr(10) ORDER BY position), $max_window_chars) AS window_text
    FROM pair_context GROUP BY conversation_id
)
SELECT 'D', $source, s.split, s.summary, w.window_text, nw.window_text, s.conversation_id,
    json_object('summarizer', s.summarizer, 'model', s.model, 'channel', first_message.channel,
                'negative_message_id', n.message_id, 'negative_conversation_id', n.conversation_id)
FROM conversation_summaries s
JOIN windows w ON w.conversation_id = s.conversation_id
JOIN pair_context first_message ON first_message.conversation_id = s.conversation_id AND first_message.position = 0
LEFT JOIN pair_context n ON n.message_id = first_message.neighbour_id
LEFT JOIN windows nw ON nw.conversation_id = n.conversation_id
WHERE s.source = $source
"""

# Every strategy's rows pass through here: a pair whose anchor equals its positive teaches nothing (a repeated
# "ok" in a two-message conversation), and a negative equal to the positive or anchor would contradict it.
_CLEAN_SQL = """
SELECT strategy, source, split, anchor, positive,
    CASE WHEN negative = positive OR negative = anchor THEN NULL ELSE negative END AS negative,
    conversation_id, meta
FROM ({query}) AS q(strategy, source, split, anchor, positive, negative, conversation_id, meta)
WHERE anchor != positive AND trim(anchor) != '' AND trim(positive) != ''
"""

_STRATEGY_SQL = {"A": _THREAD_SQL, "B": _QUERY_RESPONSE_SQL, "C": _TEMPORAL_SQL, "D": _SUMMARY_SQL}


THREAD_POSITIVES = ("conversation", "window")


def build_pairs(con: duckdb.DuckDBPyConnection, strategy: str, source: str, config: PairConfig) -> int:
    """Replace `source`'s rows of the strategy's pair table in one transaction; return the row count."""
    if config.thread_positive not in THREAD_POSITIVES:
        raise ValueError(f"thread_positive must be one of {THREAD_POSITIVES}, not {config.thread_positive!r}")
    table = STRATEGIES[strategy]
    con.execute(pair_table_ddl(table))
    params = {
        "source": source,
        "max_message_chars": config.max_message_chars,
        "k": config.window_messages,
        "w": config.temporal_window,
        "gap_s": config.negative_max_gap_minutes * 60,
    }
    con.execute(_CONTEXT_SQL, params)
    if strategy == "C":
        con.execute(_CHUNKS_SQL, {"max_window_chars": config.max_window_chars})
    query = _STRATEGY_SQL[strategy]
    query_params = {
        "source": source,
        "max_window_chars": config.max_window_chars,
        "max_pairs_per_conversation": config.max_pairs_per_conversation,
        "seed": config.seed,
        "response_messages": config.response_messages,
        "thread_positive": config.thread_positive,
        "next_message_pairs": config.next_message_pairs,
    }
    used = {name: value for name, value in query_params.items() if f"${name}" in query}
    try:
        with transaction(con):
            con.execute(f"DELETE FROM {table} WHERE source = $source", {"source": source})
            con.execute(f"INSERT INTO {table} {_CLEAN_SQL.format(query=query)}", used)
    finally:
        con.execute("DROP TABLE IF EXISTS pair_context; DROP TABLE IF EXISTS pair_chunks")
    return con.execute(f"SELECT count(*) FROM {table} WHERE source = $source", {"source": source}).fetchone()[0]
