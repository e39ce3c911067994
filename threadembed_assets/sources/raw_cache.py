"""The raw Parquet cache: `$THREADEMBED_DATA_DIR/raw/<source>/part-NNNNN.parquet`, replaced as a whole."""

import shutil
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from threadembed_assets import settings
from threadembed_assets.sources.schema import RAW_SCHEMA, ParquetPart, RawPiece

PART_GLOB = "part-*.parquet"


def raw_cache_dir(source: str) -> Path:
    """The folder of Parquet parts holding `source`'s raw dataset."""
    return settings.raw_dir(source)


def write_raw_cache(pieces: Iterable[RawPiece], dest: Path) -> dict:
    """Write a loader's pieces as Parquet parts in a temporary folder, then swap it in for `dest`.

    A load that fails leaves the previous cache as it was. Returns rows, error rows and bytes.
    """
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    parts = 0
    writer: pq.ParquetWriter | None = None
    try:
        for piece in pieces:
            if isinstance(piece, ParquetPart) or writer is None:
                if writer is not None:
                    writer.close()
                    writer = None
                part = partial / f"part-{parts:05d}.parquet"
                parts += 1
                if isinstance(piece, ParquetPart):
                    piece.write(part)
                    continue
                writer = pq.ParquetWriter(part, RAW_SCHEMA, compression="snappy")
            writer.write_batch(piece)
        if writer is not None:
            writer.close()
        if parts == 0:
            pq.write_table(pa.Table.from_batches([], schema=RAW_SCHEMA), partial / "part-00000.parquet")
        _swap(partial, dest)
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return raw_cache_stats(dest)


def _swap(partial: Path, dest: Path) -> None:
    previous = dest.with_name(dest.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if dest.exists():
        dest.rename(previous)
    partial.rename(dest)
    shutil.rmtree(previous, ignore_errors=True)


def raw_cache_stats(dest: Path) -> dict:
    """Rows, unreadable rows and bytes of a raw cache (read from the parts' `error` column alone)."""
    rows = error_rows = size = 0
    for part in dest.glob(PART_GLOB):
        errors = pq.ParquetFile(part).read(columns=["error"]).column("error")
        rows += len(errors)
        error_rows += len(errors) - errors.null_count
        size += part.stat().st_size
    return {"rows": rows, "error_rows": error_rows, "bytes": size}


def preview_markdown(dest: Path, limit: int = 8) -> str:
    """The first rows of a raw cache as a markdown table."""
    columns = ["channel", "message_id", "conversation_id", "timestamp", "author", "text", "error"]
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {', '.join(columns)} FROM read_parquet($glob) LIMIT $limit",
            {"glob": str(dest / PART_GLOB), "limit": limit},
        ).fetchall()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(value or "").replace("|", "\\|").replace("\n", " ")[:80] for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
