"""The raw Parquet cache: `$THREADEMBED_DATA_DIR/raw/<source>/messages.parquet`, replaced atomically."""

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from threadembed_assets import settings
from threadembed_assets.sources.schema import RAW_SCHEMA


def raw_parquet_path(source: str) -> Path:
    """The cached raw dataset of `source`."""
    return settings.raw_dir(source) / "messages.parquet"


def write_raw_parquet(batches: Iterable[pa.RecordBatch], dest: Path) -> dict:
    """Write RAW_SCHEMA batches to `dest` through a temporary file, so a failed load leaves the old cache.

    Returns rows, error rows and bytes written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".parquet.partial")
    rows = errors = 0
    try:
        with pq.ParquetWriter(partial, RAW_SCHEMA, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
                errors += batch.num_rows - batch.column("error").null_count
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return {"rows": rows, "error_rows": errors, "bytes": dest.stat().st_size}


def preview_markdown(path: Path, limit: int = 8) -> str:
    """The first rows of a raw cache as a markdown table."""
    table = pq.ParquetFile(path).read_row_group(0).slice(0, limit) if pq.ParquetFile(path).num_row_groups else None
    if table is None:
        return "(empty)"
    columns = ["channel", "message_id", "conversation_id", "timestamp", "author", "text", "error"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.select(columns).to_pylist():
        cells = [str(row[c] or "").replace("|", "\\|").replace("\n", " ")[:80] for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
