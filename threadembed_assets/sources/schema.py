"""The raw message schema every loader produces: chat JSONL fields plus provenance and a parse error."""

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

CHAT_FIELDS = [
    "source",
    "channel",
    "message_id",
    "conversation_id",
    "reply_to",
    "timestamp",
    "author",
    "text",
]

RAW_SCHEMA = pa.schema(
    [(name, pa.string()) for name in CHAT_FIELDS]
    + [
        ("platform", pa.string()),
        ("channel_name", pa.string()),  # the channel's name for people, where `channel` is a key (Discord ids)
        ("origin", pa.string()),  # file, upstream split or generator the row came from
        # Position in its origin (line or row number); null where it is the row's place in its part, 1-based
        # (parts that DuckDB copies from a file line for line).
        ("seq", pa.int64()),
        ("error", pa.string()),  # why the row could not be read; such rows go to quarantine
    ]
)

BATCH_ROWS = 50_000


def raw_batch(rows: list[dict]) -> pa.RecordBatch:
    """Build a RAW_SCHEMA batch from dicts (missing keys become null, values become strings).

    A string that UTF-8 cannot hold (a lone surrogate, as a `"\\ud800"` JSON escape gives) is written escaped and
    its row marked as an error, so that it is quarantined instead of failing the batch.
    """
    try:
        return _batch(rows)
    except UnicodeEncodeError:
        return _batch([_with_lone_surrogates_escaped(row) for row in rows])


def _with_lone_surrogates_escaped(row: dict) -> dict:
    escaped = {
        name: value.encode("utf-8", "backslashreplace").decode() if isinstance(value, str) else value
        for name, value in row.items()
    }
    bad = [name for name in row if escaped[name] != row[name]]
    if bad:
        escaped["error"] = row.get("error") or f"invalid_utf8: lone surrogate in {', '.join(bad)}"
    return escaped


def _batch(rows: list[dict]) -> pa.RecordBatch:
    columns = {}
    for field in RAW_SCHEMA:
        values = [row.get(field.name) for row in rows]
        if field.type == pa.string():
            values = [None if v is None else str(v) for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    return pa.RecordBatch.from_pydict(columns, schema=RAW_SCHEMA)


def batched(rows: Iterable[dict], size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Group row dicts into RAW_SCHEMA record batches of at most `size` rows."""
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield raw_batch(chunk)
            chunk = []
    if chunk:
        yield raw_batch(chunk)


def error_row(source: str, platform: str, origin: str, seq: int, error: str, raw: object = "") -> dict:
    """A row that could not be read: kept with its reason so the warehouse can quarantine it."""
    return {
        "source": source,
        "platform": platform,
        "origin": origin,
        "seq": seq,
        "error": error,
        "text": None if raw is None or raw == "" else str(raw)[:2000],
    }


def parse_json(data: str | bytes) -> object:
    """`json.loads`, with nesting too deep for Python's parser raised as a `JSONDecodeError` like malformed JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


def as_object(value: object) -> dict:
    """`value` when it is a JSON object, else an empty one: a field of the wrong type reads as missing."""
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ParquetPart:
    """A piece of a raw dataset that writes its own RAW_SCHEMA Parquet file (e.g. DuckDB copying a file)."""

    write: Callable[[Path], None]


RawPiece = pa.RecordBatch | ParquetPart
"""What loaders yield: record batches, or parts that write themselves."""


def file_head(path: Path, size: int = 8192) -> str:
    """The first `size` bytes of a file as text (undecodable bytes replaced), for telling its format or header."""
    with path.open("rb") as handle:
        return handle.read(size).decode("utf-8", errors="replace")
