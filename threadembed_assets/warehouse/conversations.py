"""`conversations`: one row per conversation of a source, rebuilt from `messages`."""

import duckdb

from threadembed_assets.warehouse.render import render_window
from threadembed_assets.warehouse.schema import ensure_schema, transaction

_CONVERSATIONS_SELECT = """
SELECT source, min(platform), min(channel), conversation_id, min(conversation_method),
    min(split), count(*), count(DISTINCT author), list(DISTINCT author ORDER BY author), min(ts), max(ts),
    min(channel_name)
FROM messages WHERE source = $source
GROUP BY source, conversation_id
ORDER BY conversation_id
"""


def build_conversations(con: duckdb.DuckDBPyConnection, source: str) -> dict:
    """Replace `source`'s rows of `conversations` in one transaction; return counts by split and method."""
    ensure_schema(con)
    params = {"source": source}
    with transaction(con):
        con.execute("DELETE FROM conversations WHERE source = $source", params)
        con.execute(f"INSERT INTO conversations {_CONVERSATIONS_SELECT}", params)
    stats = con.execute(
        "SELECT count(*), coalesce(median(n_messages), 0), count(*) FILTER (WHERE n_messages >= 3) "
        "FROM conversations WHERE source = $source",
        params,
    ).fetchone()
    by_split = dict(
        con.execute(
            "SELECT split, count(*) FROM conversations WHERE source = $source GROUP BY ALL ORDER BY 1", params
        ).fetchall()
    )
    return {
        "conversations": stats[0],
        "median_messages": float(stats[1]),
        "with_3_plus": stats[2],
        "by_split": by_split,
    }


def conversation_preview(con: duckdb.DuckDBPyConnection, source: str, limit: int = 3, max_lines: int = 8) -> str:
    """Markdown of a few multi-message conversations of `source`, rendered as the models see them."""
    picked = con.execute(
        "SELECT conversation_id, channel, conversation_method, split FROM conversations "
        "WHERE source = $source AND n_messages >= 3 ORDER BY hash(conversation_id) LIMIT $limit",
        {"source": source, "limit": limit},
    ).fetchall()
    parts = []
    for conversation_id, channel, method, split in picked:
        lines = con.execute(
            "SELECT author, text, platform FROM messages WHERE source = $source AND conversation_id = $cid "
            "ORDER BY position LIMIT $n",
            {"source": source, "cid": conversation_id, "n": max_lines},
        ).fetchall()
        window = render_window(((a, t[:200]) for a, t, _ in lines), lines[0][2] if lines else None)
        parts.append(f"**{conversation_id}** ({channel}, {method}, {split})\n\n```\n{window}\n```")
    return "\n\n".join(parts) or "(no conversation with 3 or more messages)"
