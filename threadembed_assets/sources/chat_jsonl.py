"""Chat JSONL, the interchange format: one message a line with the fields of `CHAT_FIELDS`."""

import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from threadembed_assets.sources.hub import limited
from threadembed_assets.sources.schema import CHAT_FIELDS, RAW_SCHEMA, ParquetPart, batched, error_row, parse_json

# A 1 MB message must be read (then quarantined as oversize), so allow objects well beyond it.
_MAX_OBJECT_BYTES = 64 * 1024 * 1024
_PLATFORMS = ("irc", "slack", "discord")
# A row's platform is its own `platform` field when that is one of _PLATFORMS, else the one its source names as a
# whole word (`irc_ubuntu`, `ubuntu-irc`, `#irc`; not `circle`), ASCII case ignored. Each pattern is read alike by
# Python's `re` and DuckDB's RE2, so the tolerant reader and the DuckDB copy give every row the same platform.
_CLAIMED = {name: "".join(f"[{letter.upper()}{letter}]" for letter in name) for name in _PLATFORMS}
_NAMED = {name: f"(^|[^A-Za-z0-9]){claimed}([^A-Za-z0-9]|$)" for name, claimed in _CLAIMED.items()}
_CLAIMED_RE = {name: re.compile(pattern) for name, pattern in _CLAIMED.items()}
_NAMED_RE = {name: re.compile(pattern) for name, pattern in _NAMED.items()}
_PLATFORM_SQL = " ".join(
    [f"WHEN regexp_full_match(platform, '{pattern}') THEN '{name}'" for name, pattern in _CLAIMED.items()]
    + [f"WHEN regexp_matches(source, '{pattern}') THEN '{name}'" for name, pattern in _NAMED.items()]
)
_COLUMNS = {name: "VARCHAR" for name in [*CHAT_FIELDS, "platform"]}
# Ids a file's rows name each other by: prefixed with the file's namespace, so that two files that both say `m1` or
# `c1` neither collide nor link. A blank id stays blank (the warehouse quarantines a blank message id).
_NAMESPACED = ("message_id", "conversation_id", "reply_to")


def _namespaced(column: str) -> str:
    return (
        f"CASE WHEN $namespace IS NOT NULL AND trim({column}) <> '' THEN $namespace || ':' || {column} "
        f"ELSE {column} END AS {column}"
    )


_COPY_SQL = f"""
COPY (
    SELECT source, channel, {_namespaced("message_id")}, {_namespaced("conversation_id")}, {_namespaced("reply_to")},
        timestamp,
        author, text,
        coalesce($platform, CASE {_PLATFORM_SQL} ELSE 'chat' END) AS platform,
        CAST(NULL AS VARCHAR) AS channel_name,
        $origin AS origin,
        CAST(NULL AS BIGINT) AS seq,  -- the line number is the row's place in the part (see RAW_SCHEMA)
        CAST(NULL AS VARCHAR) AS error
    FROM (
        SELECT * REPLACE (coalesce(source, $source) AS source)
        FROM read_json($path, format = 'newline_delimited', columns = $columns,
                       maximum_object_size = {_MAX_OBJECT_BYTES})
    )
    LIMIT $max_rows
) TO '{{dest}}' (FORMAT parquet, COMPRESSION snappy)
"""


def platform_of(source: object, claimed: object = None) -> str:
    """The platform of a chat JSONL row: its own `claimed` platform when that is irc/slack/discord (any case), else
    the one its `source` names as a whole word (`irc_ubuntu`, `#irc` -> `irc`; `circle` -> `chat`), else `chat`."""
    for name, pattern in _CLAIMED_RE.items():
        if claimed is not None and pattern.fullmatch(str(claimed)):
            return name
    for name, pattern in _NAMED_RE.items():
        if source is not None and pattern.search(str(source)):
            return name
    return "chat"


class RequestError(ValueError):
    """What was asked cannot be answered as asked (bad input, not a fault of the code): a client's error. Search
    raises it for every bad request, `epoch_seconds` for a timestamp it cannot read."""


def epoch_seconds(value) -> float | None:
    """A chat JSONL timestamp (ISO-8601, with an offset or UTC; or epoch seconds) as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise RequestError(f"timestamp {value!r} is neither ISO-8601 nor epoch seconds") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def chat_jsonl_part(
    path: Path, source: str, platform: str | None, max_rows: int | None = None, namespace: str | None = None
) -> ParquetPart:
    """A raw part for a chat JSONL file (gzip-compressed when its name ends in `.gz`).

    Clean files are copied to Parquet by DuckDB's `read_json` (vectorized, bounded memory, no Python per row).
    A file with a malformed line or invalid UTF-8 is re-read line by line so that the good lines load and each
    bad one becomes an error row. `source` fills rows without one; `platform=None` infers it from the source;
    `max_rows` keeps the first lines only; `namespace` prefixes message, reply and gold conversation ids
    (`<namespace>:<id>`), so that two files that both say `m1` or `c1` neither collide nor link across files.
    """

    def write(dest: Path) -> None:
        params = {
            "path": str(path),
            "source": source,
            "platform": platform,
            "origin": path.name,
            "columns": _COLUMNS,
            "max_rows": max_rows,
            "namespace": namespace,
        }
        try:
            with duckdb.connect() as con:
                con.execute(_COPY_SQL.replace("{dest}", str(dest).replace("'", "''")), params)
        except duckdb.InvalidInputException:
            with pq.ParquetWriter(dest, RAW_SCHEMA, compression="zstd") as writer:
                for batch in batched(limited(_read_tolerant(path, source, platform, namespace), max_rows)):
                    writer.write_batch(batch)

    return ParquetPart(write)


def _read_tolerant(path: Path, source: str, platform: str | None, namespace: str | None) -> Iterator[dict]:
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
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
                record = parse_json(line)
            except json.JSONDecodeError as exc:
                yield error_row(source, platform or "chat", path.name, seq, f"malformed_json: {exc.msg}", line)
                continue
            if not isinstance(record, dict):
                yield error_row(source, platform or "chat", path.name, seq, "malformed_json: not an object", line)
                continue
            row = {name: record.get(name) for name in CHAT_FIELDS}
            if row["source"] is None:  # as `coalesce` in _COPY_SQL: an empty source stays empty
                row["source"] = source
            if namespace is not None:
                for name in _NAMESPACED:
                    if row[name] is not None and str(row[name]).strip():
                        row[name] = f"{namespace}:{row[name]}"
            row.update(
                platform=platform or platform_of(row["source"], record.get("platform")), origin=path.name, seq=seq
            )
            yield row


def looks_like_chat_jsonl(first_line: str) -> bool:
    """True when a file's first line is a JSON object with the chat JSONL `text` field."""
    try:
        record = parse_json(first_line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "text" in record and "message_id" in record


def read_messages(path: Path) -> list[dict]:
    """The messages of a chat JSONL file, as they are; a line that is not a JSON object is a clear error naming it."""
    messages = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(message, dict):
                raise ValueError(f"{path}:{number}: a message is a JSON object")
            messages.append(message)
    return messages
