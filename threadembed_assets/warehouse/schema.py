"""DuckDB tables of the warehouse. Every table carries `source`, the partition key a materialization replaces."""

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

MESSAGES_DDL = """
CREATE TABLE IF NOT EXISTS messages (
    source VARCHAR NOT NULL,
    platform VARCHAR NOT NULL,
    channel VARCHAR,
    message_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    reply_to VARCHAR,
    author VARCHAR,
    ts TIMESTAMP,
    position INTEGER NOT NULL,
    text VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    conversation_method VARCHAR NOT NULL,  -- gold | reply_chain | time_gap | disentangled
    channel_name VARCHAR  -- the channel's name for people where `channel` is a key (Discord: server/channel ids)
)
"""

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,   -- category: malformed_json, invalid_utf8, no_text, oversize, ...
    detail VARCHAR,            -- the full message of what went wrong
    message_id VARCHAR,
    conversation_id VARCHAR,   -- as the row gave it, so a conversation lost to quarantine can be traced
    origin VARCHAR,            -- file or upstream the row came from
    seq BIGINT,                -- its line or row number there
    raw VARCHAR                -- the row's text, cut to 2,000 characters
)
"""

CONVERSATIONS_DDL = """
CREATE TABLE IF NOT EXISTS conversations (
    source VARCHAR NOT NULL,
    platform VARCHAR NOT NULL,
    channel VARCHAR,
    conversation_id VARCHAR NOT NULL,
    conversation_method VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    n_messages INTEGER NOT NULL,
    n_authors INTEGER NOT NULL,
    participants VARCHAR[],
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    channel_name VARCHAR
)
"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables that do not exist yet; set the session to UTC."""
    con.execute("SET TimeZone = 'UTC'")
    for ddl in (MESSAGES_DDL, QUARANTINE_DDL, CONVERSATIONS_DDL):
        con.execute(ddl)
    for table in ("messages", "conversations"):  # a warehouse written before channels had display names
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS channel_name VARCHAR")


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables in the database."""
    return {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def table_schema(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(column, type) pairs of a warehouse table."""
    return [(row[0], row[1]) for row in con.execute(f"DESCRIBE {table}").fetchall()]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises: a partition's rows change all at once or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
