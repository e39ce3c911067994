"""What a model learned from: conversation keys that survive reloads, renames and re-derivation, and the file in a
checkpoint folder that records them, so that a benchmark can refuse a model that saw its test conversations and
label a score "transfer" only when the model never saw that platform."""

import hashlib
import json
from pathlib import Path

import duckdb

PROVENANCE_FILE = "threadembed_training.json"

# A conversation's key: a hash of its first message's id. It does not depend on the source's partition name, on
# how the conversation id was derived, or on anything added after the conversation, so the same conversation
# loaded by the pipeline and by the benchmark CLI (or re-derived with another gap) keeps its key.
CONVERSATION_KEY_SQL = "left(md5(first_message_id), 16)"


def conversation_key(first_message_id: str) -> str:
    """The key of the conversation whose first message has this id (the same as `CONVERSATION_KEY_SQL`)."""
    return hashlib.md5(first_message_id.encode()).hexdigest()[:16]


def train_conversations(
    con: duckdb.DuckDBPyConnection, sources: list[str], exclude_platforms: list[str] | tuple[str, ...] = ()
) -> dict:
    """Keys, sources and platforms of the train-split conversations of `sources` outside `exclude_platforms`."""
    rows = con.execute(
        f"""
        WITH first AS (
            SELECT m.source, m.conversation_id, arg_min(m.message_id, m.position) AS first_message_id
            FROM messages m GROUP BY ALL
        )
        SELECT c.source, c.platform, {CONVERSATION_KEY_SQL}
        FROM conversations c JOIN first USING (source, conversation_id)
        WHERE c.split = 'train' AND list_contains($sources, c.source)
            AND NOT list_contains($excluded, c.platform)
        """,
        {"sources": list(sources), "excluded": list(exclude_platforms)},
    ).fetchall()
    return {
        "sources": sorted({s for s, _, _ in rows}),
        "platforms": sorted({p for _, p, _ in rows}),
        "conversation_keys": sorted({k for _, _, k in rows}),
    }


def fingerprint(keys: list[str]) -> str:
    """A digest of a set of conversation keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def write_provenance(model_dir: Path, learned: dict, excluded_platforms: list[str], inherited: dict | None) -> dict:
    """Record in `model_dir` what the model learned from, together with what its start model had learned."""
    keys = sorted(set(learned["conversation_keys"]) | set((inherited or {}).get("conversation_keys", [])))
    record = {
        "sources": sorted(set(learned["sources"]) | set((inherited or {}).get("sources", []))),
        "platforms": sorted(set(learned["platforms"]) | set((inherited or {}).get("platforms", []))),
        "excluded_platforms": sorted(excluded_platforms),
        "conversations": len(keys),
        "fingerprint": fingerprint(keys),
        "conversation_keys": keys,
    }
    (Path(model_dir) / PROVENANCE_FILE).write_text(json.dumps(record))
    return record


def read_provenance(model_dir: str | Path) -> dict | None:
    """What a checkpoint learned from, or None for a model the pipeline did not train (a base or hub model)."""
    path = Path(model_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
