"""Load one source's raw Parquet into `messages` and `quarantine`, replacing that source's rows atomically."""

from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
import pyarrow as pa
from pydantic import Field

from threadembed_assets.chat.corpus import log_from_messages
from threadembed_assets.chat.linker import Encode, Linker, conversation_roots
from threadembed_assets.sources.raw_cache import PART_GLOB
from threadembed_assets.warehouse.schema import ensure_schema, transaction


class LoadOptions(dg.Config):
    """How raw rows become warehouse messages (the run config of `messages`)."""

    max_text_chars: int = Field(default=20_000, description="Longer messages are quarantined as oversize.")
    derivation: Literal["disentangler", "silence"] = Field(
        default="disentangler",
        description="How messages without gold ids or reply links become conversations: the published "
        "disentangler (silence cuts where none is published yet), or silence cuts.",
    )
    gap_minutes: float = Field(
        default=30.0, description="Silence cuts: a silence this long in a channel starts a new conversation."
    )
    train_ratio: float = Field(default=0.8, description="Share of conversations in the train split.")
    dev_ratio: float = Field(default=0.1, description="Share in the dev split; test gets the rest.")


# The raw rows with `row_ord`, a row's place across the parts in file order (parts are read in name order, 2**40
# rows per part at most), on which staging and the later reads of the same rows join.
_RAW_ROWS = (
    "(SELECT *, file_index * 1099511627776 + file_row_number AS row_ord FROM "
    "read_parquet($glob, file_row_number = true))"
)

# `staged` holds the keys of every raw row and its quarantine reason (at most one), not its text: the text is read
# from the Parquet parts once more where a row is written, so no wide intermediate is materialized. Duplicates are
# decided among the otherwise good rows (the first occurrence in file order stays). Strings are ISO-8601, with an
# offset or in UTC; numbers are epoch seconds; `infinity` is unparseable (a gap to it has no length).
_STAGE_SQL = f"""
CREATE OR REPLACE TEMP TABLE staged AS
WITH checked AS (
    SELECT row_ord, message_id, conversation_id, reply_to, channel, ts,
        CASE
            WHEN error IS NOT NULL THEN split_part(error, ':', 1)
            WHEN text IS NULL OR trim(text) = '' THEN 'no_text'
            WHEN length(text) > $max_text_chars THEN 'oversize'
            WHEN message_id IS NULL OR trim(message_id) = '' THEN 'no_message_id'
            WHEN timestamp IS NOT NULL AND ts IS NULL THEN 'unparseable_timestamp'
        END AS bad_reason
    FROM (
        SELECT * EXCLUDE (parsed_ts), CASE WHEN isfinite(parsed_ts) THEN parsed_ts END AS ts
        FROM (
            SELECT *,
                coalesce(TRY_CAST(timestamp AS TIMESTAMPTZ), try(to_timestamp(TRY_CAST(timestamp AS DOUBLE))))
                    AT TIME ZONE 'UTC' AS parsed_ts
            FROM {_RAW_ROWS}
        )
    )
), first_of_duplicates AS (
    SELECT message_id, min(row_ord) AS first_ord FROM checked WHERE bad_reason IS NULL
    GROUP BY message_id HAVING count(*) > 1
)
SELECT checked.* EXCLUDE (bad_reason),
    coalesce(bad_reason, CASE WHEN row_ord > first_ord THEN 'duplicate_message_id' END) AS reason
FROM checked LEFT JOIN first_of_duplicates ON checked.bad_reason IS NULL
    AND checked.message_id = first_of_duplicates.message_id
"""

# Conversations: gold ids where present; otherwise the root of the reply chain (a reply to a gold message joins
# that conversation); messages with no reply links are left to the derivation: sessions split by silences within a
# channel here (`time_gap`), which the disentangler may then replace (`disentangled`). The chain walk only visits
# messages without a gold id (and the gold messages they reply to), so gold data skips it. Derived ids name a
# message, not a count: `chain:<root id>`, `gap:<id of the session's first message>` (in (ts, row_ord) order), so a
# session keeps its id when data is added before it or `gap_minutes` changes elsewhere.
_RESOLVE_SQL = """
CREATE OR REPLACE TEMP TABLE resolved AS
WITH RECURSIVE good AS (
    SELECT * EXCLUDE (reason) FROM staged WHERE reason IS NULL
), ungrouped AS (
    SELECT message_id, reply_to FROM good WHERE conversation_id IS NULL
), walk(message_id, root_id, root_conversation) AS (
    SELECT message_id, message_id, conversation_id FROM good
    WHERE (conversation_id IS NULL AND (reply_to IS NULL OR reply_to NOT IN (SELECT message_id FROM good)))
       OR (conversation_id IS NOT NULL AND message_id IN (SELECT reply_to FROM ungrouped))
    UNION ALL
    SELECT child.message_id, walk.root_id, walk.root_conversation
    FROM ungrouped AS child JOIN walk ON child.reply_to = walk.message_id
), chains AS (
    SELECT walk.*, count(*) OVER (PARTITION BY root_id) AS chain_size FROM walk
), assigned AS (
    SELECT good.*, chains.root_id, chains.root_conversation,
        CASE
            WHEN good.conversation_id IS NOT NULL THEN 'gold'
            WHEN chains.root_conversation IS NOT NULL OR chains.chain_size > 1 THEN 'reply_chain'
            ELSE 'time_gap'
        END AS conversation_method
    FROM good LEFT JOIN chains ON good.conversation_id IS NULL AND good.message_id = chains.message_id
), sessions AS (
    SELECT row_ord,
        first_value(message_id) OVER (PARTITION BY channel, session_no ORDER BY ts, row_ord) AS session_root
    FROM (
        SELECT row_ord, channel, message_id, ts,
            sum(CASE WHEN previous_ts IS NULL OR ts - previous_ts > to_seconds($gap_seconds) THEN 1 ELSE 0 END)
                OVER (PARTITION BY channel ORDER BY ts, row_ord) AS session_no
        FROM (
            SELECT *, lag(ts) OVER (PARTITION BY channel ORDER BY ts, row_ord) AS previous_ts
            FROM assigned WHERE conversation_method = 'time_gap'
        )
    )
)
SELECT assigned.row_ord, assigned.ts, assigned.conversation_method,
    CASE assigned.conversation_method
        WHEN 'gold' THEN assigned.conversation_id
        WHEN 'reply_chain' THEN coalesce(assigned.root_conversation, 'chain:' || assigned.root_id)
        ELSE 'gap:' || sessions.session_root
    END AS conversation_id
FROM assigned LEFT JOIN sessions USING (row_ord)
"""

# The messages a derivation cuts into conversations, each channel in stream order.
_UNGROUPED_SQL = f"""
SELECT resolved.row_ord, coalesce(raw.channel, ''), raw.message_id, raw.author, epoch(resolved.ts), raw.text
FROM resolved JOIN {_RAW_ROWS} AS raw USING (row_ord)
WHERE resolved.conversation_method = 'time_gap'
ORDER BY 2, resolved.ts, resolved.row_ord
"""

# Positions and splits are computed on the keys; the text and the other columns join in at the end.
_MESSAGES_SQL = f"""
INSERT INTO messages
WITH placed AS (
    SELECT *,
        CAST(row_number() OVER (PARTITION BY conversation_id ORDER BY ts, row_ord) - 1 AS INTEGER) AS position,
        CAST(('0x' || left(md5(conversation_id), 8)) AS UBIGINT) / 4294967296.0 AS bucket
    FROM resolved
)
SELECT
    $source AS source, coalesce(raw.platform, 'chat') AS platform, raw.channel, raw.message_id,
    placed.conversation_id, raw.reply_to, raw.author, placed.ts, placed.position, raw.text,
    CASE
        WHEN bucket < $train_ratio THEN 'train'
        WHEN bucket < $train_ratio + $dev_ratio THEN 'dev'
        ELSE 'test'
    END AS split,
    placed.conversation_method, raw.channel_name
FROM placed JOIN {_RAW_ROWS} AS raw USING (row_ord)
"""

_QUARANTINE_SQL = f"""
INSERT INTO quarantine
SELECT $source, staged.reason, coalesce(raw.error, staged.reason), raw.message_id, raw.conversation_id, raw.origin,
    coalesce(raw.seq, raw.file_row_number + 1), left(raw.text, 2000)
FROM staged JOIN {_RAW_ROWS} AS raw USING (row_ord)
WHERE staged.reason IS NOT NULL
"""


def load_messages(
    con: duckdb.DuckDBPyConnection,
    source: str,
    raw_cache: Path,
    options: LoadOptions,
    disentangler: Callable[[], tuple[Linker, dict, Encode | None]] | None = None,
) -> dict:
    """Replace `source`'s rows of `messages` and `quarantine` from its raw cache folder in one transaction.

    Messages without gold ids or reply links are cut into conversations by `disentangler` (which loads a published
    one, as `load_published` does, only where such messages exist) where given, else by silences of
    `options.gap_minutes`. Returns counts: messages, quarantined
    rows by reason, conversations by method.
    """
    ensure_schema(con)
    glob = str(raw_cache / PART_GLOB)
    con.execute(_STAGE_SQL, {"glob": glob, "max_text_chars": options.max_text_chars})
    by_source = {"source": source}
    try:
        con.execute(_RESOLVE_SQL, {"gap_seconds": options.gap_minutes * 60})
        if disentangler is not None:
            disentangle_ungrouped(con, glob, disentangler)
        with transaction(con):
            con.execute("DELETE FROM messages WHERE source = $source", by_source)
            con.execute(
                _MESSAGES_SQL,
                {**by_source, "glob": glob, "train_ratio": options.train_ratio, "dev_ratio": options.dev_ratio},
            )
            con.execute("DELETE FROM quarantine WHERE source = $source", by_source)
            con.execute(_QUARANTINE_SQL, {**by_source, "glob": glob})
    finally:
        con.execute("DROP TABLE IF EXISTS staged")
        con.execute("DROP TABLE IF EXISTS resolved")
    return message_counts(con, source)


def disentangle_ungrouped(
    con: duckdb.DuckDBPyConnection, glob: str, disentangler: Callable[[], tuple[Linker, dict, Encode | None]]
) -> int:
    """Cut the messages that have neither gold ids nor reply links into conversations with the linker, each channel
    as one stream in time order; a conversation is named by its first message (`dis:<id>`). Returns how many
    messages it placed."""
    rows = con.execute(_UNGROUPED_SQL, {"glob": glob}).fetchall()
    if not rows:
        return 0
    linker, _, encode = disentangler()
    placed_rows, placed_ids = [], []
    for _, group in groupby(rows, key=lambda row: row[1]):
        group = list(group)
        log = log_from_messages(group[0][1], [(r[2], None, r[3], r[4], r[5]) for r in group])
        roots = conversation_roots(linker.link(log, encode))
        placed_rows += [r[0] for r in group]
        placed_ids += [f"dis:{log.ids[root]}" for root in roots]
    placed = pa.table({"row_ord": pa.array(placed_rows, pa.int64()), "conversation_id": placed_ids})
    con.register("placed_by_linker", placed)
    try:
        con.execute(
            "UPDATE resolved SET conversation_id = placed_by_linker.conversation_id, conversation_method = "
            "'disentangled' FROM placed_by_linker WHERE resolved.row_ord = placed_by_linker.row_ord"
        )
    finally:
        con.unregister("placed_by_linker")
    return len(placed_rows)


def message_counts(con: duckdb.DuckDBPyConnection, source: str) -> dict:
    """Counts of one source in the warehouse: messages, conversations by method, quarantine by reason."""
    params = {"source": source}
    messages = con.execute("SELECT count(*) FROM messages WHERE source = $source", params).fetchone()[0]
    by_method = dict(
        con.execute(
            "SELECT conversation_method, count(DISTINCT conversation_id) FROM messages WHERE source = $source "
            "GROUP BY ALL ORDER BY 1",
            params,
        ).fetchall()
    )
    quarantined = dict(
        con.execute(
            "SELECT reason, count(*) FROM quarantine WHERE source = $source GROUP BY ALL ORDER BY 1", params
        ).fetchall()
    )
    return {
        "messages": messages,
        "conversations": sum(by_method.values()),
        "conversations_by_method": by_method,
        "quarantined": sum(quarantined.values()),
        "quarantine_by_reason": quarantined,
    }
