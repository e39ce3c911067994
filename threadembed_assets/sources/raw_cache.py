"""The raw Parquet cache: `$THREADEMBED_DATA_DIR/raw/<source>/part-NNNNN.parquet`, replaced as a whole.

`raw/<source>` is a symlink to one complete version folder, `raw/.versions/<source>/<stamp>/`. A new load writes a
new version folder and then switches the link with one atomic rename, so a reader, or a process killed at any
point, sees the old cache or the new one, never a mix or nothing. The previous version stays (a reader that resolved
the link just before the switch still finds its files); older ones are removed after the switch.
"""

import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from threadembed_assets import settings
from threadembed_assets.links import clear_staging, switch_link
from threadembed_assets.sources.schema import RAW_SCHEMA, ParquetPart, RawPiece

PART_GLOB = "part-*.parquet"


def raw_cache_dir(source: str) -> Path:
    """The folder of Parquet parts holding `source`'s raw dataset."""
    return settings.raw_dir(source)


def write_raw_cache(pieces: Iterable[RawPiece], dest: Path) -> dict:
    """Write a loader's pieces as Parquet parts in a new version folder, then switch `dest` to it atomically.

    A load that fails (or is killed) leaves the previous cache as it was. Returns rows, error rows and bytes.
    """
    versions = dest.parent / ".versions" / dest.name
    version = versions / f"{time.time_ns():020d}"
    version.mkdir(parents=True)
    parts = 0
    writer: pq.ParquetWriter | None = None
    try:
        for piece in pieces:
            if isinstance(piece, ParquetPart) or writer is None:
                if writer is not None:
                    writer.close()
                    writer = None
                part = version / f"part-{parts:05d}.parquet"
                parts += 1
                if isinstance(piece, ParquetPart):
                    piece.write(part)
                    continue
                writer = pq.ParquetWriter(part, RAW_SCHEMA, compression="snappy")
            writer.write_batch(piece)
        if writer is not None:
            writer.close()
            writer = None
        if parts == 0:
            pq.write_table(pa.Table.from_batches([], schema=RAW_SCHEMA), version / "part-00000.parquet")
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(version, ignore_errors=True)
        raise
    _switch(dest, version)
    return raw_cache_stats(dest)


def _switch(dest: Path, version: Path) -> None:
    """Point `dest` at `version` with one rename, then remove versions older than the one it replaced."""
    if dest.is_dir() and not dest.is_symlink():
        # A cache of the layout before versions becomes the oldest version (a one-time, two-step move).
        first = version.with_name(f"{0:020d}")
        dest.rename(first)
        switch_link(dest, first, within=dest.parent)
    keep = {version.resolve(), dest.resolve() if dest.is_symlink() else None}
    clear_staging(dest)
    switch_link(dest, version, within=dest.parent)
    for old in version.parent.iterdir():
        if old.resolve() not in keep and old.name < version.name:
            shutil.rmtree(old, ignore_errors=True)


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
