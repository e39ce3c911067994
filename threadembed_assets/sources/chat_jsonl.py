"""Chat JSONL, the interchange format: one message a line with the fields of `CHAT_FIELDS`."""

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from threadembed_assets.sources.schema import CHAT_FIELDS, RAW_SCHEMA, batched, error_row

_COLUMNS_SQL = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in CHAT_FIELDS) + "}"
# A 1 MB message must be read (then quarantined as oversize), so allow objects well beyond it.
_MAX_OBJECT_BYTES = 64 * 1024 * 1024
_PLATFORMS = ("irc", "slack", "discord")


def platform_of(source: str | None) -> str:
    """The platform a chat JSONL `source` value names (`irc_ubuntu` -> `irc`), else `chat`."""
    lowered = (source or "").lower()
    return next((name for name in _PLATFORMS if name in lowered), "chat")


def read_chat_jsonl(path: Path, source: str, platform: str | None) -> Iterator[pa.RecordBatch]:
    """Read a chat JSONL file as RAW_SCHEMA batches.

    Clean files are parsed by DuckDB's `read_json` (vectorized, bounded memory). A file with a malformed line or
    invalid UTF-8 is re-read line by line so that the good lines load and each bad one becomes an error row.
    `source` fills rows that lack one; `platform=None` infers it per row from the row's source.
    """
    try:
        yield from _read_fast(path, source, platform)
    except duckdb.InvalidInputException:
        yield from batched(_read_tolerant(path, source, platform))


def _read_fast(path: Path, source: str, platform: str | None) -> Iterator[pa.RecordBatch]:
    con = duckdb.connect()
    select = ", ".join(f"coalesce({name}, $source) AS {name}" if name == "source" else name for name in CHAT_FIELDS)
    platform_sql = " ".join(f"WHEN lower(source) LIKE '%{name}%' THEN '{name}'" for name in _PLATFORMS)
    select += f", coalesce($platform, CASE {platform_sql} ELSE 'chat' END) AS platform"
    reader = con.sql(
        f"SELECT {select} FROM read_json($path, format='newline_delimited', columns={_COLUMNS_SQL}, "
        f"maximum_object_size={_MAX_OBJECT_BYTES})",
        params={"path": str(path), "source": source, "platform": platform},
    ).to_arrow_reader(batch_size=100_000)
    # Read the whole file before yielding, so that a bad line late in the file falls back cleanly
    # instead of after some batches were already handed out.
    table = reader.read_all()
    seq_start = 1
    for batch in table.to_batches(max_chunksize=100_000):
        n = batch.num_rows
        columns = [batch.column(name) for name in [*CHAT_FIELDS, "platform"]] + [
            pa.array([path.name] * n, pa.string()),
            pa.array(range(seq_start, seq_start + n), pa.int64()),
            pa.nulls(n, pa.string()),
        ]
        seq_start += n
        yield pa.RecordBatch.from_arrays(columns, schema=RAW_SCHEMA)


def _read_tolerant(path: Path, source: str, platform: str | None) -> Iterator[dict]:
    with path.open("rb") as handle:
        for seq, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = raw_line.decode("utf-8", errors="replace")
                yield error_row(source, platform or "chat", path.name, seq, f"invalid_utf8: {exc.reason}", text)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield error_row(source, platform or "chat", path.name, seq, f"malformed_json: {exc.msg}", line)
                continue
            if not isinstance(record, dict):
                yield error_row(source, platform or "chat", path.name, seq, "malformed_json: not an object", line)
                continue
            row = {name: record.get(name) for name in CHAT_FIELDS}
            row["source"] = row["source"] or source
            row.update(platform=platform or platform_of(row["source"]), origin=path.name, seq=seq)
            yield row


def looks_like_chat_jsonl(first_line: str) -> bool:
    """True when a file's first line is a JSON object with the chat JSONL `text` field."""
    try:
        record = json.loads(first_line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "text" in record and "message_id" in record
